"""Rollout throughput of the `transformers` backend on the embedded model (fp16 weights, fp32, bf16).

For each weight format and batch size: sample exactly `--new-tokens` tokens (EOS ignored, T=1,
with the backend's own inverse-CDF sampler) from
defender prompts and report generated tokens/s (prefill included), the prefill alone, the mean
cached decode step, and games/s (a cpu-demo game is 1.5 turns on average: half the seeds are
revised by the attacker). `benchmarks/llamacpp_ceiling.py` runs the same prompts on llama.cpp.

    python benchmarks/rollout.py --batches 1 8 16 --new-tokens 128
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import TURNS_PER_GAME, bench_prompt_ids, cpu_name

from selfredteam.config import ModelConfig
from selfredteam.policy.hf import InverseCdfSampler, TransformersPolicy, cpu_has_native_bf16

VARIANTS = {
    # name: (model.dtype, model.cpu_fp16_weights)
    "fp16-weights": ("float32", True),  # default without native bf16: fp32 activations, fp16 weights in decode
    "float32": ("float32", False),
    "bf16+fp16-weights": ("bfloat16", True),  # default with native bf16: bf16 prefill, fp16 weights in decode
    "bfloat16": ("bfloat16", False),
}


def left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, attn


@torch.inference_mode()
def measure(policy: TransformersPolicy, batch: int, new_tokens: int) -> dict[str, float]:
    ids, attn = left_pad(bench_prompt_ids(policy, batch), policy.tokenizer.pad_token_id)
    t0 = time.perf_counter()
    policy.model(input_ids=ids, attention_mask=attn, use_cache=True)
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = policy.model.generate(input_ids=ids, attention_mask=attn, do_sample=False, top_k=None, top_p=None,
                                temperature=None, logits_processor=[InverseCdfSampler(1.0)],
                                max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                pad_token_id=policy.tokenizer.pad_token_id)
    total = time.perf_counter() - t0
    generated = (out.shape[1] - ids.shape[1]) * batch
    return {"prompt_tokens": float(attn.sum()) / batch, "tok_s": generated / total, "prefill_s": prefill,
            "decode_step_s": (total - prefill) / max(new_tokens - 1, 1),
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
