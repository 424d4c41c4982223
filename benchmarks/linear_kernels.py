"""fp32 linear kernels on this CPU: MKL's `linear` (the stock kernel) against oneDNN's (what
`cpu_fastpath.frozen_linear` runs), on the embedded model's shapes, in alternating rounds.

Why: prefill and the learner's passes are fp32 products with frozen weights on an AVX2 CPU, so the
kernel's rate sets most of a cpu-demo step there (`step_flops.py`). The table says which kernel is
faster here, and how much; `step_ab.py` then says what it does to a whole step. Each shape runs
x W^T with M rows (`--rows`) for the forward, and grad W (what the input gradient computes) through
MKL's `grad @ W`, which the learner keeps, and through oneDNN for comparison. Best of `--rounds`,
the two kernels alternating, so a drifting VM moves both alike.

    python benchmarks/linear_kernels.py --rows 256 1024
"""

from __future__ import annotations

import argparse

import torch
from _common import cpu_name, flop_rate

SHAPES = [("q/o proj", 896, 896), ("gate/up proj", 896, 4864), ("down proj", 4864, 896), ("LM head", 896, 151936)]
"""(name, in, out) of the embedded model's linears (Qwen2.5 0.5B); k/v (896 -> 128) are small."""


def kernels(x: torch.Tensor, w: torch.Tensor, g: torch.Tensor | None) -> dict:
    """The calls to time for x W^T, and for g W (the input gradient) unless `g` is None."""
    from selfredteam.policy.cpu_fastpath import _onednn_linear

    out = {"fwd mkl": lambda: torch.nn.functional.linear(x, w), "fwd onednn": lambda: _onednn_linear(x, w, None)}
    if g is not None:
        out |= {"grad mkl": lambda: g @ w, "grad onednn": lambda: _onednn_linear(g, w.t(), None)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from selfredteam.policy.cpu_fastpath import ONEDNN_LINEAR

    if not ONEDNN_LINEAR:
        raise SystemExit("oneDNN's linear is not available here (cpu_fastpath.ONEDNN_LINEAR).")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{cpu_name()}, {args.threads} threads, torch {torch.__version__}; GFLOP/s, best of {args.rounds} "
          "alternating rounds\n")
    print("| rows | linear | forward MKL | forward oneDNN | oneDNN / MKL | input grad MKL | input grad oneDNN |")
    print("|---|---|---|---|---|---|---|")
    for m in args.rows:
        for name, k, n in SHAPES:
            # The head's input gradient runs per vocabulary chunk in the learner: not timed here.
            calls = kernels(torch.randn(m, k), torch.randn(n, k) * 0.02,
                            None if name == "LM head" else torch.randn(m, n))
            fl = 2 * m * k * n
            best = {key: 0.0 for key in calls}
            for _ in range(args.rounds):
                for key, fn in calls.items():
                    best[key] = max(best[key], flop_rate(fn, fl) / 1e9)
            grad = [f"{best[key]:.1f}" if key in best else "-" for key in ("grad mkl", "grad onednn")]
            print(f"| {m} | {name} ({k} -> {n}) | {best['fwd mkl']:.1f} | {best['fwd onednn']:.1f} | "
                  f"{best['fwd onednn'] / best['fwd mkl']:.2f}x | {grad[0]} | {grad[1]} |", flush=True)


if __name__ == "__main__":
    main()
