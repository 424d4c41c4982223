"""Rollout throughput of the transformers backend on the embedded model: fp32 vs bf16.

Prints a Markdown table for sampling `--new-tokens` tokens from attacker prompts at each batch
size: end-to-end generate() tokens/s (prefill included), the prefill alone, and one cached
decode step. Run on an otherwise idle machine:

    python benchmarks/rollout_dtype.py --batches 1 8 --new-tokens 32
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from selfredteam.config import ModelConfig
from selfredteam.data import load_seeds
from selfredteam.game.prompts import attacker_turn
from selfredteam.policy.base import SamplingParams
from selfredteam.policy.hf import TransformersPolicy


def measure(policy: TransformersPolicy, batch: int, new_tokens: int) -> dict[str, float]:
    seeds = load_seeds("embedded")[:batch]
    turns = [attacker_turn(s.prompt, s.harmful, cot=True) for s in seeds]
    enc = [policy.encode(t) for t in turns]
    pad = policy.tokenizer.pad_token_id
    width = max(map(len, enc))
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc])
    attn = (ids != pad).long()
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = policy.model(input_ids=ids, attention_mask=attn, use_cache=True)
        prefill = time.perf_counter() - t0
        # Decode: cached one-token forwards, as generate does after the prefill.
        pkv, nxt = out.past_key_values, ids[:, -1:]
        t0 = time.perf_counter()
        for _ in range(4):
            attn = torch.cat([attn, torch.ones(len(enc), 1, dtype=torch.long)], dim=1)
            pkv = policy.model(input_ids=nxt, attention_mask=attn, past_key_values=pkv, use_cache=True).past_key_values
        decode = (time.perf_counter() - t0) / 4
    t0 = time.perf_counter()
    gens = policy._generate_batch(enc, SamplingParams(new_tokens, 1.0, 1.0))
    total = time.perf_counter() - t0
    tokens = sum(len(g.completion_ids) for g in gens)
    return {"tok_s": tokens / total, "prefill_s": prefill, "decode_step_s": decode, "prompt_tokens": width}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print("\n| dtype | batch | prompt tokens | new tokens | tokens/s | prefill s | decode s/step |")
    print("|---|---|---|---|---|---|---|")
    for dtype in args.dtypes:
        policy = TransformersPolicy.from_config(ModelConfig(dtype=dtype))
        for b in args.batches:
            m = measure(policy, b, args.new_tokens)
            print(f"| {dtype} | {b} | {m['prompt_tokens']} | {args.new_tokens} | {m['tok_s']:.1f} | "
                  f"{m['prefill_s']:.1f} | {m['decode_step_s']:.3f} |")


if __name__ == "__main__":
    main()
