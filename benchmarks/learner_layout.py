"""The learner's two batch layouts on the same samples: one padded row per sample, or each
micro-batch packed into one sequence (shared prompt prefix once, no padding; `rl/logprobs.py`).

Plays `--steps` real `train --preset cpu-demo` steps in this process and keeps each update's
samples (with the trunk states the sampler kept) and aux SFT rows. Then it runs each kept update
again in both layouts, alternating for `--rounds` rounds, the LoRA weights reset before each, and
prints the tokens each layout computes and the update's time. The losses must agree: the layout
changes the float summation order only.

    python benchmarks/learner_layout.py --steps 2 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import cpu_name

import selfredteam.rl.learner as learner_mod
from selfredteam.config import load_config
from selfredteam.rl.learner import Learner
from selfredteam.rl.model import build_trainable


def keep_updates(steps: int) -> list[tuple[list, list]]:
    """Each update's (samples, SFT rows) of a real `steps`-step cpu-demo run."""
    from selfredteam.cli import app

    kept, real = [], learner_mod.Learner.update

    def update(self, samples, sft=None, sft_coef=0.0):
        kept.append((copy.deepcopy(samples), copy.deepcopy(sft or [])))
        return real(self, samples, sft, sft_coef)

    learner_mod.Learner.update = update
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sys.argv = ["selfredteam", "train", "--preset", "cpu-demo", "--out", str(Path(tmp) / "run"),
                        "--set", f"train.steps={steps}", "--set", "train.save_every=1000"]
            try:
                app()
            except SystemExit as e:
                if e.code:
                    raise
    finally:
        learner_mod.Learner.update = real
    return kept


def tokens(learner: Learner, samples: list, packed: bool) -> int:
    """Tokens the decoder computes for these samples in the learner's micro-batches."""
    learner.packed = packed
    return sum(learner._pack(samples, mb).input_ids.numel()
               for mb in learner._micro_batches(list(range(len(samples))), samples))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    updates = keep_updates(args.steps)
    cfg = load_config(preset="cpu-demo")
    policy = build_trainable(cfg)
    start = {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_" in n}
    times: dict[tuple[int, bool], list[dict[str, float]]] = {}
    losses: dict[tuple[int, bool], float] = {}
    for _ in range(args.rounds):
        for packed in (False, True):
            for k, (samples, sft) in enumerate(updates):
                with torch.no_grad():
                    for n, p in policy.model.named_parameters():
                        if n in start:
                            p.copy_(start[n])
                learner = Learner(policy, cfg.train, temperature=cfg.generation.temperature)
                learner.packed = packed
                fresh, fresh_sft = copy.deepcopy(samples), copy.deepcopy(sft)  # an update may keep SFT trunks
                t0 = time.perf_counter()
                stats = learner.update(fresh, sft=fresh_sft, sft_coef=cfg.train.sft.coef)
                times.setdefault((k, packed), []).append({"update": time.perf_counter() - t0, **stats})
                losses[k, packed] = stats["loss/policy"]
    layout = Learner(policy, cfg.train)
    print(f"The learner's update on a cpu-demo run's samples, {args.rounds} alternating rounds; {cpu_name()}\n")
    print("| update | layout | tokens computed | update (median) | update (each round) | ref log-probs | policy fwd+bwd "
          "| aux SFT | policy loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, (samples, _) in enumerate(updates):
        for packed in (False, True):
            rows = times[k, packed]
            med = {key: statistics.median(r[key] for r in rows) for key in
                   ("update", "timing/learn_ref_logprob_s", "timing/learn_fwd_bwd_s", "timing/learn_sft_s")}
            each = " / ".join(f"{r['update']:.1f}" for r in rows)  # the spread a median hides
            print(f"| {k + 1} | {'packed' if packed else 'padded'} | {tokens(layout, samples, packed)} | "
                  f"{med['update']:.1f} s | {each} s | {med['timing/learn_ref_logprob_s']:.1f} s | "
                  f"{med['timing/learn_fwd_bwd_s']:.1f} s | {med['timing/learn_sft_s']:.1f} s | {losses[k, packed]:.6g} |")


if __name__ == "__main__":
    main()
