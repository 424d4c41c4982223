"""Our rollout against llama.cpp at one batch size, in alternating rounds.

The shared 2-core VMs drift: in one hour llama.cpp measured 30.7 and 41.8 tok/s at batch 8 on the
same machine, so one run of each engine, minutes apart, can say either. Here each round runs
`rollout.py` (this CPU kind's default weights: fp16 weights in decode, with bf16 elsewhere where
the CPU has native bf16) and then `llamacpp_ceiling.py`, on the same prompts; the table has every
round and the median of the per-round ratios.

    python benchmarks/side_by_side.py --rounds 3 --batch 8
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from _common import cpu_name

from selfredteam.policy.hf import cpu_has_native_bf16

HERE = Path(__file__).resolve().parent


def tokens_per_s(script: str, *args: str) -> float | None:
    """The tokens/s cell of the one table row the script prints (None when it has no row)."""
    res = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True, check=True)
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and line.split("|")[2].strip().isdigit()]
    return float(rows[0].split("|")[4]) if rows else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args()
    ours = "bf16+fp16-weights" if cpu_has_native_bf16() else "fp16-weights"
    common = ["--batches", str(args.batch), "--new-tokens", str(args.new_tokens)]
    rounds = []
    for _ in range(args.rounds):
        a = tokens_per_s("rollout.py", "--variants", ours, *common)
        b = tokens_per_s("llamacpp_ceiling.py", *common)
        if b is None:
            print(f"llama-cpp-python is not installed: no side-by-side on {cpu_name()} (llamacpp_ceiling.py says how)")
            return
        rounds.append((a, b))
    print(f"batch {args.batch}, {args.new_tokens} new tokens, T=1, same prompts; {cpu_name()}; ours: {ours}; "
          f"{args.rounds} alternating rounds\n")
    print("| round | ours tokens/s | llama.cpp Q4_K_M tokens/s | ours / llama.cpp |")
    print("|---|---|---|---|")
    for i, (a, b) in enumerate(rounds, 1):
        print(f"| {i} | {a:.1f} | {b:.1f} | {a / b:.0%} |")
    print(f"| median | {statistics.median(a for a, _ in rounds):.1f} | {statistics.median(b for _, b in rounds):.1f} | "
          f"{statistics.median(a / b for a, b in rounds):.0%} |")


if __name__ == "__main__":
    main()
