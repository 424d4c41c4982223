"""A cpu-demo step's turns sampled as one chained batch or in two calls, on the same games.

The step's games as `train` plays them (embedded model, LoRA live, trunk states captured, the
embedded judge): the attacker turns and the vanilla seeds' defender turns, then the defender's
answers to each revision. Chained (`policy.base.generate_chained`), an answer joins the batch as
its attacker turn ends; in two calls it waits for the last one. Greedy (T=0) rows make the two
paths write exactly the same tokens, so the seconds compare like for like; sampled rounds
(the preset's T, each path its own draws) give the view from a run. Rounds alternate the paths.

    python benchmarks/chained_turns.py --rounds 3
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from _common import cpu_name

from selfredteam.config import load_config
from selfredteam.data import load_pool, sample_batch
from selfredteam.game.play import play_games, sampling_params
from selfredteam.judges import build_judge
from selfredteam.policy.hf import TransformersPolicy
from selfredteam.policy.runtime import describe, runtime_info
from selfredteam.rl.loop import RoleView
from selfredteam.rl.model import build_trainable


class TwoCalls:
    """A policy without `generate_chained`: play_games then asks in two calls."""

    def __init__(self, inner) -> None:
        self.inner, self.name = inner, inner.name

    def generate(self, turns, params):
        return self.inner.generate(turns, params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], help="config overrides on the cpu-demo preset")
    args = ap.parse_args()
    cfg = load_config("cpu-demo", overrides=args.set)
    trainable = build_trainable(cfg)
    sampler = TransformersPolicy(trainable.model, trainable.tokenizer, cfg.model.name_or_path,
                                 cfg.generation.batch_size, cfg.generation.max_prompt_length)
    view = RoleView(trainable, sampler, "attacker", capture_trunk=trainable.frozen_layers > 0)
    judge = build_judge(cfg.judge)
    pool = load_pool(cfg.data)
    print(f"cpu-demo step's games ({cfg.train.rollout_batch_size} seeds, half revised), {cpu_name()}, "
          f"{torch.get_num_threads()} threads, {describe(runtime_info(cfg.model, cfg.run.threads))}; rounds alternate the paths\n")
    print("| round | sampling | path | turns | tokens | seconds | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for r in range(args.rounds):
        seeds = sample_batch(pool, cfg.train.rollout_batch_size, cfg.game.harmful_fraction, random.Random(r))
        for greedy in (True, False):
            gen = cfg.generation if not greedy else type(cfg.generation)(**{**vars(cfg.generation), "temperature": 0.0})
            params = {f"{role}_params": sampling_params(gen, role, cfg.game.cot) for role in ("attacker", "defender")}
            for name, policy in (("chained", view), ("two calls", TwoCalls(view))):
                torch.manual_seed(r)
                t0 = time.perf_counter()
                games = play_games(seeds, policy, judge, rules=cfg.game, rng=random.Random(r), **params)
                seconds = time.perf_counter() - t0
                turns = [t for g in games for t in (g.attacker, g.defender) if t is not None]
                tokens = sum(len(t.generation.completion_ids) for t in turns)
                print(f"| {r + 1} | {'greedy' if greedy else f'T={gen.temperature}'} | {name} | {len(turns)} | "
                      f"{tokens} | {seconds:.1f} | {tokens / seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
