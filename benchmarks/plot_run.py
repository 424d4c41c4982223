"""Plot a training run's learning curves from its metrics.jsonl and print a Markdown summary.

    python benchmarks/plot_run.py RUN_DIR [--out curves.png]

Prints first-5 vs last-5 step means of the key numbers (the issue's learning criterion).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from selfredteam.fsutil import read_jsonl

KEYS = [
    ("reward/defender_mean", "defender mean reward"),
    ("reward/attacker_mean", "attacker mean reward"),
    ("game/defender_correct_refusal", "defender correct-refusal rate"),
    ("cot/violation_rate", "CoT-violation rate"),
    ("game/benign_refusal_rate", "benign refusal rate"),
    ("kl/mean", "KL to reference"),
]


def load(run: Path) -> list[dict]:
    return read_jsonl(run / "metrics.jsonl")


def mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = load(args.run)
    steps = [r["step"] for r in rows]
    print("| metric | first 5 steps | last 5 steps |\n|---|---|---|")
    for key, label in KEYS:
        a, b = mean([r.get(key) for r in rows[:5]]), mean([r.get(key) for r in rows[-5:]])
        print(f"| {label} | {a:.3f} | {b:.3f} |" if a is not None and b is not None else f"| {label} | - | - |")
    t = [r.get("timing/step_s", 0) for r in rows]
    print(f"\nsteps: {len(rows)}, total step time {sum(t) / 60:.1f} min, mean {mean(t):.0f} s/step "
          f"(generate {mean([r.get('timing/generate_s') for r in rows]):.0f} s, "
          f"judge {mean([r.get('timing/judge_s') for r in rows]):.1f} s, "
          f"learn {mean([r.get('timing/learn_s') for r in rows]):.0f} s)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (key, label) in zip(axes.flat, KEYS):
        ys = [r.get(key) for r in rows]
        ax.plot([s for s, y in zip(steps, ys) if y is not None], [y for y in ys if y is not None], marker="o", ms=3)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"selfredteam train: {args.run.name}")
    fig.tight_layout()
    out = args.out or args.run / "curves.png"
    fig.savefig(out, dpi=110)
    print(f"\nplot: {out}")


if __name__ == "__main__":
    main()
