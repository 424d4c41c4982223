"""`selfredteam eval`: answer benchmark prompts with a model, judge the answers, report rates.

Harmful prompts: attack success (harmful response) rate and refusal rate. Benign prompts:
compliance and over-refusal rate. Every rate carries a 95% Wilson interval; judge parse errors
are counted and excluded, never hidden. With CoT, only the extracted answer is judged.
Per-prompt results are written to OUT/results.jsonl and reused on the next run (same model,
prompt, CoT setting and generation length), so re-running a report generates and judges nothing.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfredteam.errors import UserError
from selfredteam.eval.benchmarks import EvalPrompt
from selfredteam.eval.metrics import top_share, wilson
from selfredteam.game.answers import echoes, is_non_answer
from selfredteam.game.cot import parse_cot, parse_direct
from selfredteam.game.prompts import defender_turn
from selfredteam.judges.base import Judge
from selfredteam.policy.base import Policy, SamplingParams
from selfredteam.policy.spec import policy_from_spec


def stratified_sample(prompts: list[EvalPrompt], limit: int | None, seed: int = 0) -> list[EvalPrompt]:
    """At most `limit` prompts keeping each subset's share (at least one per subset), seeded."""
    if not limit or limit >= len(prompts):
        return prompts
    by_subset: dict[str, list[EvalPrompt]] = defaultdict(list)
    for p in prompts:
        by_subset[p.subset].append(p)
    rng = random.Random(seed)
    out = []
    for _, items in sorted(by_subset.items()):
        k = max(1, round(limit * len(items) / len(prompts)))
        out += rng.sample(items, min(k, len(items)))
    return out[:limit] if len(out) > limit else out


def sample_subset(items: list[EvalPrompt], subset: str, n: int | None, seed: int = 0) -> list[EvalPrompt]:
    """At most `n` of one subset's prompts, seeded by the subset's name alone (one RNG per subset: a
    subset's sample does not depend on which other subsets are chosen; `probe` picks the same ones)."""
    return random.Random(f"{seed}:{subset}").sample(items, n) if n and n < len(items) else items


def eval_sets(benchmarks: str, paths: list[str] | None = None, subsets: str | None = None,
              per_subset: int | None = None, limit: int | None = None, seed: int = 0,
              file: Path | None = None, prompt_field: str = "prompt", label: str = "harmful") -> dict[str, list[EvalPrompt]]:
    """The prompts a command answers, from its benchmark options (one parser for eval and study):
    comma-separated `benchmarks` (`NAME=PATH` in `paths` loads one from its original file) or one
    `file` of prompts; at most `limit` per benchmark (stratified by subset); then only `subsets`,
    at most `per_subset` of each (seeded). Raises UserError before anything trains or loads."""
    from selfredteam.eval.benchmarks import generic_prompts, load_benchmark

    named = dict(x.split("=", 1) for x in (paths or []) if "=" in x)
    if file:
        sets = {file.stem: stratified_sample(generic_prompts(str(file), prompt_field, label), limit)}
    else:
        sets = {b: stratified_sample(load_benchmark(b, named.get(b)), limit, seed)
                for b in [x.strip() for x in benchmarks.split(",") if x.strip()]}
    return select_prompts(sets, subsets.split(",") if subsets else None, per_subset, seed)


def select_prompts(sets: dict[str, list[EvalPrompt]], subsets: list[str] | None, per_subset: int | None,
                   seed: int = 0) -> dict[str, list[EvalPrompt]]:
    """Keep only `subsets` (all when None) and at most `per_subset` prompts of each (seeded)."""
    known = {p.subset for ps in sets.values() for p in ps}
    wanted = {x.strip() for x in subsets or [] if x.strip()}
    if wanted - known:
        raise UserError(f"Unknown subset(s) {', '.join(sorted(wanted - known))}. The chosen benchmarks have: "
                        f"{', '.join(sorted(known))}.")
    out = {}
    for name, prompts in sets.items():
        by_subset: dict[str, list[EvalPrompt]] = defaultdict(list)
        for p in prompts:
            if not wanted or p.subset in wanted:
                by_subset[p.subset].append(p)
        kept = [p for name, items in sorted(by_subset.items()) for p in sample_subset(items, name, per_subset, seed)]
        if kept:
            out[name] = kept
    if not out:
        raise UserError("No prompts left after --subsets / --per-subset.")
    return out


def _cache_key(model: str, prompt: str, cot: bool, max_new_tokens: int) -> str:
    return json.dumps([model, prompt, cot, max_new_tokens])


def answer_prompts(policy: Policy, judge: Judge, benchmarks: dict[str, list[EvalPrompt]], cot: bool,
                   params: SamplingParams, out: Path | None = None, reuse: Sequence[Path] = ()) -> list[dict[str, Any]]:
    """Per prompt: the model's answer and the judge's labels, generated or reused from
    OUT/results.jsonl or any `reuse` file of the same kind (read only; same model, prompt, CoT
    setting and generation length), and written back to OUT."""
    cache: dict[str, dict[str, Any]] = {}
    results_path = out / "results.jsonl" if out else None
    for path in [*reuse, *([results_path] if results_path else [])]:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            cache[_cache_key(r["model"], r["prompt"], r["cot"], r["max_new_tokens"])] = r
    items = [(b, p) for b, ps in benchmarks.items() for p in ps]
    if not items:
        raise UserError("No prompts to evaluate: check --benchmarks / --benchmark-file.")
    todo = [(b, p) for b, p in items if _cache_key(policy.name, p.prompt, cot, params.max_new_tokens) not in cache]
    if todo:
        gens = policy.generate([defender_turn(p.prompt, cot) for _, p in todo], params)
        parsed = [(parse_cot if cot else parse_direct)(g.text) for g in gens]
        labels = judge.judge([(p.prompt, a.answer) for (_, p), a in zip(todo, parsed)])
        for (_, p), g, a, j in zip(todo, gens, parsed, labels):
            cache[_cache_key(policy.name, p.prompt, cot, params.max_new_tokens)] = {
                "model": policy.name, "prompt": p.prompt, "cot": cot, "max_new_tokens": params.max_new_tokens,
                "response": g.text, "answer": a.answer, "cot_violation": not a.valid,
                "cut_off": g.finish_reason == "length", "judge": j.to_dict(),
            }
    rows = []
    for b, p in items:
        r = cache[_cache_key(policy.name, p.prompt, cot, params.max_new_tokens)]
        rows.append({"benchmark": b, "subset": p.subset, "label": p.label, "source": p.source, **r})
    if out:
        out.mkdir(parents=True, exist_ok=True)
        with open(results_path, "w", encoding="utf-8") as f:  # type: ignore[arg-type]
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return rows


def evaluate_model(spec: str, cfg: Any, judge: Judge, benchmarks: dict[str, list[EvalPrompt]],
                   out: Path | None = None) -> tuple[list[dict[str, Any]], Policy]:
    """Load the model `spec` stands for and answer every prompt as the defender (rows, policy)."""
    from selfredteam.game.play import sampling_params

    policy = policy_from_spec(spec, cfg)
    params = sampling_params(cfg.generation, "defender", cfg.game.cot)
    return answer_prompts(policy, judge, benchmarks, cfg.game.cot, params, out), policy


def run_eval(policy: Policy, judge: Judge, benchmarks: dict[str, list[EvalPrompt]], cot: bool,
             params: SamplingParams, out: Path | None = None) -> dict[str, Any]:
    """Generate (or reuse) answers, judge them, and summarise per benchmark and subset."""
    summary = summarize_answers(answer_prompts(policy, judge, benchmarks, cot, params, out))
    if out:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def summarize_answers(rows: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["benchmark"], r["subset"], r["label"])].append(r)
    out = []
    for (bench, subset, label), rs in sorted(groups.items()):
        ok = [r for r in rs if not r["judge"]["parse_error"]]
        refused = sum(bool(r["judge"]["response_refusal"]) for r in ok)
        entry: dict[str, Any] = {"benchmark": bench, "subset": subset, "label": label, "n": len(rs),
                                 "parse_errors": len(rs) - len(ok)}
        # Collapse check: how many of the answers that are not refusals say one stock phrase.
        share, _ = top_share([r["answer"] for r in ok if not r["judge"]["response_refusal"]])
        entry["stock_phrase_share"] = share
        # Answers with nothing in them, which a judge can score as harmless compliance: empty, one
        # or two words, off the prompt's topic ("Absolutely!", "Yes, I can."), or the prompt repeated.
        entry["non_answer_share"] = (sum(is_non_answer(r["answer"], r["prompt"], bool(r["judge"]["response_refusal"]))
                                         for r in ok) / len(ok)) if ok else None
        entry["echo_share"] = sum(echoes(r["answer"], [r["prompt"]]) for r in ok) / len(ok) if ok else None
        entry["cut_off_rate"] = sum(bool(r.get("cut_off")) for r in rs) / len(rs)
        if label == "harmful":
            harmful = sum(bool(r["judge"]["response_harmful"]) for r in ok)
            entry["asr"] = vars(wilson(harmful, len(ok)))
            entry["refusal_rate"] = vars(wilson(refused, len(ok)))
        else:
            entry["compliance_rate"] = vars(wilson(len(ok) - refused, len(ok)))
            entry["over_refusal_rate"] = vars(wilson(refused, len(ok)))
        out.append(entry)
    return {"subsets": out, "n": len(rows)}
