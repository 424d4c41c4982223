"""`selfredteam judge eval`: per-label precision/recall/F1 on data the judge was not fitted on.

- prompt harmful: the dev-eval benchmarks shipped in the package (XSTest, WildJailbreak vanilla
  + adversarial, harmful and benign, OR-Bench-Hard), never used by `judge fit`;
- response harmful: HarmBench classifier-val behaviours held out by `judge fit`'s split;
- response refusal: a small hand-written set shipped with the package (a sanity check only).
Also the false-positive rate on benign-but-scary prompts (XSTest safe, OR-Bench-Hard,
WildJailbreak adversarial benign), the over-refusal trap a self-play judge must not fall into.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from selfredteam.data import read_records
from selfredteam.judges.base import Judge
from selfredteam.judges.fit import harmbench_rows, split_by_behaviour


@dataclass
class Binary:
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    skipped: int = 0
    """Items with no prediction (parse error or missing label)."""

    def add(self, pred: bool | None, gold: bool) -> None:
        if pred is None:
            self.skipped += 1
        elif pred and gold:
            self.tp += 1
        elif pred:
            self.fp += 1
        elif gold:
            self.fn += 1
        else:
            self.tn += 1

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def metrics(self) -> dict[str, float | int]:
        p = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        r = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        acc = (self.tp + self.tn) / self.n if self.n else 0.0
        fpr = self.fp / (self.fp + self.tn) if self.fp + self.tn else 0.0
        return {"n": self.n, "precision": p, "recall": r, "f1": f1, "accuracy": acc, "fpr": fpr,
                "skipped": self.skipped}


def prompt_eval_sets() -> dict[str, list[tuple[str, bool]]]:
    """subset -> [(prompt, is_harmful)] from the shipped dev-eval benchmarks (never fitted on)."""
    from selfredteam.eval.benchmarks import load_benchmark

    sets: dict[str, list[tuple[str, bool]]] = {}
    for name in ("xstest", "wildjailbreak", "or_bench_hard"):
        for p in load_benchmark(name):
            sets.setdefault(p.subset, []).append((p.prompt, p.label == "harmful"))
    return sets


SCARY_BENIGN = ("xstest_safe", "or_bench_hard", "benign_adversarial")


def refusal_dev_set() -> list[tuple[str, str, bool]]:
    path = Path(str(resources.files("selfredteam") / "assets" / "refusal_dev.jsonl"))
    return [(r["prompt"], r["response"], bool(r["refusal"])) for _, r in read_records(path)]


def evaluate_judge(judge: Judge, data_dir: Path, limit: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Run the judge on every eval set; return overall and per-set metrics."""
    results: dict[str, Any] = {"per_set": {}}
    overall = Binary()
    scary = Binary()
    for name, rows in prompt_eval_sets().items():
        rows = rows[:limit] if limit else rows
        labels = judge.judge([(p, None) for p, _ in rows])
        b = Binary()
        for j, (_, gold) in zip(labels, rows):
            pred = None if j.parse_error else j.prompt_harmful
            b.add(pred, gold)
            overall.add(pred, gold)
            if name in SCARY_BENIGN:
                scary.add(pred, gold)
        results["per_set"][name] = b.metrics()
    results["prompt_harmful"] = overall.metrics()
    results["scary_benign_fpr"] = scary.metrics()["fpr"]

    _, held = split_by_behaviour(harmbench_rows(data_dir), seed=seed)
    held = held[:limit] if limit else held
    labels = judge.judge([(r["prompt"], r["response"]) for r in held])
    rh = Binary()
    for j, r in zip(labels, held):
        rh.add(None if j.parse_error else j.response_harmful, bool(r["harmful"]))
    results["response_harmful"] = rh.metrics()

    dev = refusal_dev_set()
    labels = judge.judge([(p, r) for p, r, _ in dev])
    rr = Binary()
    for j, (_, _, gold) in zip(labels, dev):
        rr.add(None if j.parse_error else j.response_refusal, gold)
    results["response_refusal"] = rr.metrics()
    return results
