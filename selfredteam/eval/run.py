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
from pathlib import Path
from typing import Any

from selfredteam.errors import UserError
from selfredteam.eval.benchmarks import EvalPrompt
from selfredteam.eval.metrics import wilson
from selfredteam.game.cot import parse_cot, parse_direct
from selfredteam.game.prompts import defender_turn
from selfredteam.judges.base import Judge
from selfredteam.policy.base import Policy, SamplingParams


def build_eval_policy(spec: str, cfg: Any) -> Policy:
    """`embedded`, an HF id/dir/.gguf, a `train` run or checkpoint dir, or `openai:URL[#model]`."""
    from selfredteam.config import ModelConfig, to_dict

    if spec.startswith("openai:"):
        from selfredteam.policy.openai_compat import OpenAIChatPolicy

        url, _, model = spec[len("openai:"):].partition("#")
        mc = ModelConfig(**{**to_dict(cfg)["model"], "backend": "openai", "base_url": url,
                            "name_or_path": model or cfg.model.name_or_path})
        return OpenAIChatPolicy.from_config(mc)
    from selfredteam.policy.hf import TransformersPolicy, resolve_dtype, set_threads

    p = Path(spec)
    if p.is_dir() and ((p / "checkpoints").is_dir() or (p / "state.json").is_file()):
        import torch

        from selfredteam.rl.export import load_merged

        set_threads(cfg.run.threads)
        model, tokenizer, ckpt = load_merged(p, dtype=resolve_dtype(cfg.model.dtype, torch.device("cpu")))
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return TransformersPolicy(model.eval(), tokenizer, f"checkpoint:{ckpt}", cfg.generation.batch_size)
    mc = ModelConfig(**{**to_dict(cfg)["model"], "name_or_path": spec})
    return TransformersPolicy.from_config(mc, cfg.generation.batch_size, cfg.run.threads, cfg.run.seed)


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


def _cache_key(model: str, prompt: str, cot: bool, max_new_tokens: int) -> str:
    return json.dumps([model, prompt, cot, max_new_tokens])


def run_eval(policy: Policy, judge: Judge, benchmarks: dict[str, list[EvalPrompt]], cot: bool,
             params: SamplingParams, out: Path | None = None) -> dict[str, Any]:
    """Generate (or reuse) answers, judge them, and summarise per benchmark and subset."""
    cache: dict[str, dict[str, Any]] = {}
    results_path = out / "results.jsonl" if out else None
    if results_path and results_path.is_file():
        for line in results_path.read_text(encoding="utf-8").splitlines():
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
                "response": g.text, "answer": a.answer, "cot_violation": not a.valid, "judge": j.to_dict(),
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
    summary = summarize(rows)
    if out:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["benchmark"], r["subset"], r["label"])].append(r)
    out = []
    for (bench, subset, label), rs in sorted(groups.items()):
        ok = [r for r in rs if not r["judge"]["parse_error"]]
        refused = sum(bool(r["judge"]["response_refusal"]) for r in ok)
        entry: dict[str, Any] = {"benchmark": bench, "subset": subset, "label": label, "n": len(rs),
                                 "parse_errors": len(rs) - len(ok)}
        if label == "harmful":
            harmful = sum(bool(r["judge"]["response_harmful"]) for r in ok)
            entry["asr"] = vars(wilson(harmful, len(ok)))
            entry["refusal_rate"] = vars(wilson(refused, len(ok)))
        else:
            entry["compliance_rate"] = vars(wilson(len(ok) - refused, len(ok)))
            entry["over_refusal_rate"] = vars(wilson(refused, len(ok)))
        out.append(entry)
    return {"subsets": out, "n": len(rows)}
