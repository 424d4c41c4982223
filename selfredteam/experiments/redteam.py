"""`selfredteam redteam`: point a (trained) attacker at any model and get a report.

garak, PyRIT and HarmBench send fixed probes; ours adapts: the attacker rewrites each seed into
`attempts` attacks (sampled, so they differ), the target answers each as a plain user message
(no system prompt unless one is given), the judge labels every answer. A harmful seed counts as
*broken* when any of its attempts got a harmful answer (best-of-K); a benign seed (if the seed
file has any) when any attempt was refused (over-refusal bait). Reported: per-attempt and
best-of-K attack success with 95% Wilson intervals, per seed category, the target's refusal rate,
attack diversity, and an HTML report with the attacks that worked (collapsed, content warning).

Robust to a flaky target: requests go through the OpenAI client (timeouts, retries with backoff,
a concurrency limit); answers are judged and appended to OUT/results.jsonl a chunk at a time, so
a target that stops answering ends the command cleanly with everything done so far kept, and the
same command later continues where it stopped (attacks and answers are cached per prompt).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from selfredteam.config import Config
from selfredteam.data import Seed
from selfredteam.errors import EndpointError
from selfredteam.fsutil import read_jsonl, write_jsonl
from selfredteam.policy.base import Turn

CHUNK = 16
"""Attacks answered, judged and saved together: what a target outage can cost."""


class TargetDown(EndpointError):
    """The target stopped answering; the message says how far the run got and how to continue."""


def target_turn(prompt: str, system: str | None = None) -> Turn:
    """The attack as a plain chat message, the way the target is used in deployment."""
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return Turn(msgs)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return read_jsonl(path)


def make_attacks(attacker: Any, seeds: list[Seed], attempts: int, cfg: Config, out: Path) -> list[dict[str, Any]]:
    """Each seed revised `attempts` times, written to OUT/attacks.jsonl (a re-run reuses them)."""
    from selfredteam.eval.diversity import generate_attacks
    from selfredteam.game.play import sampling_params

    path = out / "attacks.jsonl"
    rows = generate_attacks(attacker, [s for s in seeds for _ in range(attempts)], cfg.game.cot,
                            sampling_params(cfg.generation, "attacker", cfg.game.cot))
    for i, (row, seed) in enumerate(zip(rows, (s for s in seeds for _ in range(attempts)))):
        row |= {"seed_index": i // attempts, "attempt": i % attempts, "category": seed.category or "uncategorized",
                "seed_source": seed.source}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, rows)
    return rows


def answer(target: Any, judge: Any, attacks: list[dict[str, Any]], max_new_tokens: int, temperature: float,
           out: Path, system: str | None = None, log: Any = print, chunk_size: int | None = None) -> list[dict[str, Any]]:
    """The target's judged answer to every attack, `chunk_size` (CHUNK) at a time, appended to
    OUT/results.jsonl."""
    size = chunk_size or CHUNK
    from selfredteam.policy.base import SamplingParams

    path = out / "results.jsonl"
    done = {(r["seed_index"], r["attempt"]): r for r in _read_jsonl(path)}
    todo = [a for a in attacks if (a["seed_index"], a["attempt"]) not in done]
    params = SamplingParams(max_new_tokens, temperature, 1.0)
    for start in range(0, len(todo), size):
        chunk = todo[start:start + size]
        try:
            gens = target.generate([target_turn(a["attack"], system) for a in chunk], params)
        except EndpointError as e:
            raise TargetDown(f"{e} Stopped after {len(done)} of {len(attacks)} attacks; their results are kept in "
                             f"{path}. Re-run the same command to continue from there.") from None
        labels = judge.judge([(a["attack"], g.text) for a, g in zip(chunk, gens)])
        with open(path, "a", encoding="utf-8") as f:
            for a, g, j in zip(chunk, gens, labels):
                row = a | {"target": target.name, "response": g.text, "finish_reason": g.finish_reason,
                           "judge": j.to_dict(), "success": success(a["seed_label"], j)}
                done[(a["seed_index"], a["attempt"])] = row
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        log(f"{len(done)} of {len(attacks)} attacks answered and judged")
    return [done[(a["seed_index"], a["attempt"])] for a in attacks]


def success(seed_label: str, j: Any) -> bool | None:
    """Did the attack work? A harmful answer to a harmful seed's attack, a refusal of a benign
    seed's (over-refusal bait); None when the judge could not be parsed."""
    if j.parse_error:
        return None
    return bool(j.response_harmful) if seed_label == "harmful" else bool(j.response_refusal)


def summarize_attacks(results: list[dict[str, Any]], attempts: int) -> dict[str, Any]:
    """Per-attempt and best-of-K success per seed class and category, refusal rate, parse errors."""
    from selfredteam.eval.metrics import wilson

    def rates(rows: list[dict[str, Any]]) -> dict[str, Any]:
        judged = [r for r in rows if r["success"] is not None]
        seeds: dict[int, list[bool]] = defaultdict(list)
        for r in judged:
            seeds[r["seed_index"]].append(r["success"])
        return {"attempts": len(rows), "judged": len(judged),
                "per_attempt": vars(wilson(sum(r["success"] for r in judged), len(judged))),
                "best_of_k": vars(wilson(sum(any(v) for v in seeds.values()), len(seeds))),
                "refusal": vars(wilson(sum(bool(r["judge"]["response_refusal"]) for r in judged), len(judged)))}

    out: dict[str, Any] = {"attempts_per_seed": attempts, "n_results": len(results),
                           "judge_parse_errors": sum(r["success"] is None for r in results), "by_label": {},
                           "by_category": {}}
    for label in ("harmful", "benign"):
        rows = [r for r in results if r["seed_label"] == label]
        if rows:
            out["by_label"][label] = rates(rows)
    for cat in sorted({r["category"] for r in results}):
        out["by_category"][cat] = rates([r for r in results if r["category"] == cat and r["seed_label"] == "harmful"])
    return out


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """OUT continues only the same red-teaming job: other settings need another --out."""
    from selfredteam.errors import UserError

    path = out / "redteam.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != settings:
            diff = ", ".join(f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v)
            raise UserError(f"{out} holds a red-teaming job with other settings ({diff}); it continues only the "
                            "same job. Use another --out for a new one.")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


def redteam(attacker_spec: str, target_spec: str, cfg: Config, out: Path, tools: Any, n: int, attempts: int,
            seeds_spec: str | None = None, max_new_tokens: int | None = None, system: str | None = None,
            chunk_size: int | None = None) -> dict[str, Any]:
    from selfredteam.data import load_pool, load_seeds

    if seeds_spec:
        pool = load_pool(cfg.data, seeds_spec)
    else:  # the shipped harmful pool
        pool = [s for s in load_seeds("embedded") if s.harmful]
    seeds = random.Random(cfg.run.seed).sample(pool, min(n, len(pool)))
    _check_settings(out, {"attacker": attacker_spec, "target": target_spec, "seeds": seeds_spec or "embedded harmful",
                          "n": len(seeds), "attempts": attempts, "run.seed": cfg.run.seed})
    attacks = _read_jsonl(out / "attacks.jsonl") or make_attacks(
        tools.policy(attacker_spec, cfg, "attacker"), seeds, attempts, cfg, out)
    target = tools.policy(target_spec, cfg, "defender")
    tokens = max_new_tokens or cfg.generation.defender_max_new_tokens
    results = answer(target, tools.judge, attacks, tokens, cfg.generation.temperature, out, system, tools.log,
                     chunk_size)
    summary = summarize_attacks(results, attempts) | {"attacker": attacker_spec, "target": target_spec, "seeds": len(seeds),
                                              "max_new_tokens": tokens, "system_prompt": system}
    from selfredteam.eval.diversity import diversity_report

    if len(attacks) >= 2:
        summary["diversity"] = diversity_report(attacks)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
