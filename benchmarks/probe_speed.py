"""How long `selfredteam probe` takes to read hidden states: WildJailbreak adversarial prompts
(the long ones), batched by length, no cache.

    python benchmarks/probe_speed.py --n 500            # the issue's 250 + 250 target
    python benchmarks/probe_speed.py --n 100 --layers 6 12 18 24
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import cpu_name

from selfredteam.config import load_config
from selfredteam.data import load_seeds
from selfredteam.eval.probe import FeatureCache, prompt_features
from selfredteam.policy.base import Turn
from selfredteam.policy.spec import policy_from_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="prompts (the shipped adversarial pool has 560)")
    ap.add_argument("--layers", type=int, nargs="+", default=[6, 12, 18, 24])
    ap.add_argument("--token-budget", type=int, default=4096)
    args = ap.parse_args()
    cfg = load_config("cpu-demo")
    policy = policy_from_spec("embedded", cfg)
    prompts = [s.prompt for s in load_seeds("embedded:adversarial")][: args.n]
    tokens = sum(len(policy.encode(Turn([{"role": "user", "content": p}]))) for p in prompts)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        prompt_features(policy, prompts, args.layers, FeatureCache(Path(tmp), "bench"), args.token_budget)
        took = time.perf_counter() - t0
    print(f"embedded model, {cpu_name()}, 2 threads; layers {args.layers}; token budget {args.token_budget}\n")
    print("| prompts | chat-templated tokens (mean) | hidden-state pass | tokens/s |")
    print("|---|---|---|---|")
    print(f"| {len(prompts)} | {tokens / len(prompts):.0f} | {took:.0f} s ({took / 60:.1f} min) | {tokens / took:.0f} |")


if __name__ == "__main__":
    main()
