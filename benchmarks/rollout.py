"""Rollout throughput of the `transformers` backend on the embedded model (fp16 weights, fp32, bf16).

For each weight format and batch size: sample exactly `--new-tokens` tokens (EOS ignored, T=1)
with the backend's own sampling loop (policy/decode.py) from defender prompts and report
generated tokens/s (prefill included), the prefill alone, the mean cached decode step, and games/s (a cpu-demo game is 1.5 turns on average: half the seeds are
revised by the attacker). `benchmarks/llamacpp_ceiling.py` runs the same prompts on llama.cpp.

    python benchmarks/rollout.py --batches 1 8 16 --new-tokens 128
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import TURNS_PER_GAME, bench_prompt_ids, cpu_name

from selfredteam.config import ModelConfig
from selfredteam.policy.decode import decode
from selfredteam.policy.hf import TransformersPolicy, cpu_has_native_bf16
from selfredteam.policy.prefill import prefill

VARIANTS = {
    # name: (model.dtype, model.cpu_fp16_weights)
    "fp16-weights": ("float32", True),  # default without native bf16: fp32 activations, fp16 weights in decode
    "float32": ("float32", False),
    "bf16+fp16-weights": ("bfloat16", True),  # default with native bf16: bf16 prefill, fp16 weights in decode
    "bfloat16": ("bfloat16", False),
}


@torch.inference_mode()
def measure(policy: TransformersPolicy, batch: int, new_tokens: int) -> dict[str, float]:
    """The backend's own sampling loop (policy/decode.py), EOS ignored: exactly `new_tokens` per row."""
    prompts = bench_prompt_ids(policy, batch)
    pad = policy.tokenizer.pad_token_id
    t0 = time.perf_counter()
    prefill(policy.model, prompts, pad_id=pad)
    prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = decode(policy.model, prompts, max_new_tokens=new_tokens, temperature=1.0, top_p=1.0, pad_id=pad,
                  eos_ids=set())
    total = time.perf_counter() - t0
    generated = sum(len(r.ids) for r in rows)
    return {"prompt_tokens": sum(map(len, prompts)) / batch, "tok_s": generated / total, "prefill_s": prefill_s,
            "decode_step_s": (total - prefill_s) / max(new_tokens - 1, 1),
            "games_s": generated / total / (new_tokens * TURNS_PER_GAME)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--bf16-max-batch", type=int, default=None,
                    help="skip bf16 above this batch (default: 8 on CPUs without native bf16, where "
                         "bf16 prefill alone takes minutes; no limit otherwise)")
    args = ap.parse_args()
    bf16_max = args.bf16_max_batch or (10**9 if cpu_has_native_bf16() else 8)
    torch.manual_seed(0)
    print(f"transformers backend, embedded model; {cpu_name()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; {args.new_tokens} new tokens, sampling T=1\n")
    print("| weights | batch | prompt tokens (mean) | tokens/s | games/s | prefill s | decode s/step |")
    print("|---|---|---|---|---|---|---|")
    for name in args.variants:
        dtype, fp16 = VARIANTS[name]
        policy = TransformersPolicy.from_config(ModelConfig(dtype=dtype, cpu_fp16_weights=fp16))
        if fp16:
            measure(policy, 2, 2)  # packs the fp16 weights (once per process, ~8 s): not timed
        for b in args.batches:
            if dtype == "bfloat16" and b > bf16_max:
                print(f"| {name} | {b} | - | skipped (no native bf16 on this CPU) | | | |")
                continue
            m = measure(policy, b, args.new_tokens)
            print(f"| {name} | {b} | {m['prompt_tokens']:.0f} | {m['tok_s']:.1f} | {m['games_s']:.3f} | "
                  f"{m['prefill_s']:.1f} | {m['decode_step_s']:.3f} |", flush=True)
        del policy


if __name__ == "__main__":
    main()
