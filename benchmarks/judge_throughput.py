"""Embedded judge throughput: (prompt, response) pairs judged per second, cache off.

Pairs are the shipped seed prompts with the refusal dev set's responses cycled (short answers
and refusals, like cpu-demo turns). The prompt-harm label alone (what attacker faithfulness
needs) is timed separately.

    python benchmarks/judge_throughput.py --pairs 256
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import cpu_name

from selfredteam.data import load_seeds
from selfredteam.eval.judge import refusal_dev_set
from selfredteam.judges.embedded import EmbeddedJudge


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=256)
    args = ap.parse_args()
    seeds = load_seeds("embedded")
    responses = [response for _, response, _ in refusal_dev_set()]
    pairs = [(seeds[i % len(seeds)].prompt, responses[i % len(responses)]) for i in range(args.pairs)]
    judge = EmbeddedJudge.load()
    judge.judge(pairs[:8])  # warm-up
    t0 = time.perf_counter()
    judge.judge(pairs)
    full = time.perf_counter() - t0
    t0 = time.perf_counter()
    judge.judge([(p, None) for p, _ in pairs])
    prompt_only = time.perf_counter() - t0
    print(f"embedded judge (MiniLM-L6 probes), {cpu_name()}, {torch.get_num_threads()} threads, "
          f"{args.pairs} pairs\n")
    print("| what | pairs/s | ms/pair |")
    print("|---|---|---|")
    print(f"| prompt + response (3 labels) | {args.pairs / full:.1f} | {1000 * full / args.pairs:.1f} |")
    print(f"| prompt only (harm label) | {args.pairs / prompt_only:.1f} | {1000 * prompt_only / args.pairs:.1f} |")


if __name__ == "__main__":
    main()
