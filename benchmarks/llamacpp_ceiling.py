"""The ceiling on this machine: llama.cpp on the embedded model's own GGUF, same prompts.

The embedded HF weights *are* this Q4_K_M GGUF dequantised (selfredteam/policy/embedded.py), so
both engines run the same model. Prompts are the same token ids as benchmarks/rollout.py;
sequences are decoded together in one llama.cpp batch (one sequence id and one KV stream
each), sampling T=1 with EOS ignored, exactly `--new-tokens` tokens each.

Needs llama-cpp-python, which has no wheel here; build it from its sdist, the library only (4.5 min
on 2 AVX-512-BF16 cores, 8.6 min on 2 Zen 1 AVX2 cores; the plain `CMAKE_ARGS="-DGGML_NATIVE=ON"` build took ~25 min on 2 AVX2 cores):

    OFF="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
    CMAKE_ARGS="-DGGML_NATIVE=ON $OFF" pip install llama-cpp-python
    python benchmarks/llamacpp_ceiling.py --batches 1 8 16 --new-tokens 128
"""

from __future__ import annotations

import argparse
import os
import time

from _common import TURNS_PER_GAME, bench_prompt_ids, cpu_name


def _quiet_callback():
    import llama_cpp as lc

    return lc.llama_log_callback(lambda level, text, user_data: None)


_QUIET = None


class BatchedLlama:
    """Minimal batched sampler over llama.cpp's C API (via llama-cpp-python's ctypes bindings)."""

    def __init__(self, gguf: str, n_seq: int, n_ctx: int, threads: int, seed: int = 0) -> None:
        import llama_cpp as lc

        global _QUIET
        _QUIET = _QUIET or _quiet_callback()  # keep a reference: ctypes must not free it
        self.lc = lc
        lc.llama_log_set(_QUIET, None)  # llama.cpp logs every tensor otherwise
        lc.llama_backend_init()
        mparams = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(gguf.encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_ctx
        cparams.n_ubatch = min(n_ctx, 512)
        cparams.n_seq_max = n_seq
        cparams.kv_unified = False  # one KV stream per sequence: attention never scans the others
        cparams.n_threads = cparams.n_threads_batch = threads
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        self.batch = lc.llama_batch_init(n_ctx, 0, 1)
        self.sampler = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        lc.llama_sampler_chain_add(self.sampler, lc.llama_sampler_init_temp(1.0))
        lc.llama_sampler_chain_add(self.sampler, lc.llama_sampler_init_dist(seed))

    def _fill(self, items: list[tuple[int, int, int, bool]]) -> None:
        """items: (token, position, sequence id, want logits)."""
        b = self.batch
        b.n_tokens = len(items)
        for i, (tok, pos, seq, logits) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        if self.lc.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def generate(self, prompts: list[list[int]], new_tokens: int) -> tuple[float, float]:
        """Returns (prefill seconds, total seconds) for `new_tokens` per prompt."""
        lc = self.lc
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        t0 = time.perf_counter()
        items, last_index = [], []
        for s, p in enumerate(prompts):
            items += [(tok, pos, s, pos == len(p) - 1) for pos, tok in enumerate(p)]
            last_index.append(len(items) - 1)
        self._fill(items)
        prefill = time.perf_counter() - t0
        pos = [len(p) for p in prompts]
        for step in range(new_tokens):
            nxt = [lc.llama_sampler_sample(self.sampler, self.ctx, i) for i in last_index]
            if step == new_tokens - 1:
                break  # the last sampled token needs no forward pass
            self._fill([(tok, pos[s], s, True) for s, tok in enumerate(nxt)])
            last_index = list(range(len(prompts)))
            pos = [x + 1 for x in pos]
        return prefill, time.perf_counter() - t0

    def close(self) -> None:
        lc = self.lc
        lc.llama_sampler_free(self.sampler)
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--gguf", default=None, help="default: the embedded model's GGUF")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed: no ceiling measured (see this script's docstring).")
        return
    from selfredteam.config import ModelConfig
    from selfredteam.policy.embedded import embedded_gguf_path
    from selfredteam.policy.hf import TransformersPolicy

    gguf = args.gguf or str(embedded_gguf_path())
    tok_policy = TransformersPolicy.from_config(ModelConfig())  # only for the identical prompt ids
    prompts_all = bench_prompt_ids(tok_policy, max(args.batches))
    del tok_policy
    print(f"llama.cpp (llama-cpp-python {llama_cpp.__version__}), {os.path.basename(gguf)}; {cpu_name()}, "
          f"{args.threads} threads; {args.new_tokens} new tokens, sampling T=1\n")
    print("| engine | batch | prompt tokens (mean) | tokens/s | games/s | prefill s | decode s/step |")
    print("|---|---|---|---|---|---|---|")
    for b in args.batches:
        prompts = prompts_all[:b]
        n_ctx = b * (max(map(len, prompts)) + args.new_tokens + 16)  # split evenly over b streams
        llm = BatchedLlama(gguf, b, n_ctx, args.threads)
        llm.generate(prompts[:1], 4)  # warm-up (page in the weights)
        prefill, total = llm.generate(prompts, args.new_tokens)
        llm.close()
        tok_s = b * args.new_tokens / total
        print(f"| llama.cpp Q4_K_M | {b} | {sum(map(len, prompts)) / b:.0f} | {tok_s:.1f} | "
              f"{tok_s / (args.new_tokens * TURNS_PER_GAME):.3f} | {prefill:.1f} | "
              f"{(total - prefill) / max(args.new_tokens - 1, 1):.3f} |", flush=True)


if __name__ == "__main__":
    main()
