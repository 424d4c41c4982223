"""Where one `train --preset cpu-demo` RL step goes, and the run's peak RSS.

Runs the real command in a child process (`--set train.steps=N`), then reads the `timing/*`
keys of metrics.jsonl: generate / judge / reference log-probs / old log-probs / policy
forward+backward / auxiliary SFT forward+backward / optimizer. Peak RSS is the child's maximum resident set (getrusage).

    python benchmarks/learner_step.py --steps 2 --set model.dtype=float32
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from _common import cpu_name, timed_train_cli

from selfredteam.fsutil import read_jsonl
from selfredteam.policy.hf import cpu_has_native_bf16

COLUMNS = [
    ("timing/generate_s", "generate"),
    ("timing/judge_s", "judge"),
    ("timing/learn_ref_logprob_s", "ref log-probs"),
    ("timing/learn_old_logprob_s", "old log-probs"),
    ("timing/learn_fwd_bwd_s", "policy fwd+bwd"),
    ("timing/learn_sft_s", "aux SFT"),
    ("timing/learn_optimizer_s", "clip+AdamW"),
    ("timing/learn_s", "learn (all)"),
    ("timing/step_s", "step"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    ap.add_argument("--native-bf16-only", action="store_true",
                    help="print a skip line instead of running on a CPU without native bf16 (for the bf16 row)")
    args = ap.parse_args()
    if args.native_bf16_only and not cpu_has_native_bf16():
        print(f"skipped on {cpu_name()}: bf16 without native instructions runs 2-6x slower (rollout table)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = timed_train_cli(out, args.steps, args.set)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        rss_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        rows = read_jsonl(out / "metrics.jsonl")
        runtime = json.loads((out / "runtime.json").read_text())
    print(f"`train --preset cpu-demo`, {args.steps} step(s) of 8 games; {cpu_name()}; dtype {runtime['dtype']} "
          f"({runtime['why']}); wall {wall:.0f} s incl. loading, peak RSS {rss_gib:.2f} GiB\n")
    print("| step | " + " | ".join(name for _, name in COLUMNS) + " | learner share |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for r in rows:
        cells = " | ".join(f"{r.get(k, float('nan')):.1f} s" for k, _ in COLUMNS)
        share = r["timing/learn_s"] / r["timing/step_s"]
        print(f"| {r['step']} | {cells} | {share:.0%} |")


if __name__ == "__main__":
    main()
