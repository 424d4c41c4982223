"""How much arithmetic a cpu-demo RL step does, per phase, and how much of its time that explains.

A step's time is its matrix products plus everything else (attention, element-wise ops, sampling,
Python). Issue 30 asks for a step of <= 30 s on AVX2 without changing what is learned, so the
question is how much of the step is arithmetic that any exact speed-up must still do. This script:

1. times `train --preset cpu-demo` for `--steps` steps (a child process, as `learner_step.py` does);
2. runs the same command again (same seed, so the same games: the token counts are printed to check)
   with a dispatch mode that counts the FLOPs of every matrix product and attention call, each under
   the step's own phase (`Timings` in rl/timing.py; the judge's calls apart), and by kernel: the
   model dtype's GEMM (prefill, learner) or fbgemm's fp16-weight GEMM (decode steps,
   policy/cpu_fastpath.py);
3. measures this machine's rate for each kernel (one GEMM of a prefill's shape; a decode step's
   linears at 8 rows through the fp16 pack), before and after the timed run (a VM drifts);
4. prints per step and phase: the FLOPs, the *floor* (seconds if every product ran at the
   measured rate and nothing else took time) and the measured seconds.

    python benchmarks/step_flops.py --steps 2
    python benchmarks/step_flops.py --steps 2 --set model.dtype=float32   # the AVX2 kind's path elsewhere

The floor is an estimate: one probe shape per kernel, attention counted at the GEMM rate (torch's
formulas, causal masking not halved). Counting slows the second run; only its FLOPs are used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from _common import cpu_name, flop_rate, step_tokens, timed_train_cli
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count

from selfredteam.fsutil import read_jsonl
from selfredteam.policy.cpu_fastpath import ONEDNN_LINEAR_OP  # frozen_linear's many-row fp32 kernel

FP16_PACK = "fp16-pack GEMM"
ATTENTION = "attention"
PHASES = [  # (phase as Timings names it, column title, metrics key of its measured seconds)
    ("play", "generate", "timing/generate_s"),
    ("judge", "judge", "timing/judge_s"),
    ("learn_ref_logprob", "ref log-probs", "timing/learn_ref_logprob_s"),
    ("learn_old_logprob", "old log-probs", "timing/learn_old_logprob_s"),
    ("learn_fwd_bwd", "policy fwd+bwd", "timing/learn_fwd_bwd_s"),
    ("learn_sft", "aux SFT", "timing/learn_sft_s"),
    ("learn_optimizer", "clip+AdamW", "timing/learn_optimizer_s"),
]
"""A step's phases. Products under `step` or `learn` outside these (none, today) are reported as `other`."""


def _gemm(dtype: torch.dtype) -> str:
    """The kernel name of a product in `dtype` ("float32 GEMM"), as counted and as probed."""
    return f"{str(dtype).removeprefix('torch.')} GEMM"


def _kernel_and_flops(func: Any, args: tuple, kwargs: dict, out: Any) -> tuple[str, int] | None:
    """(kernel kind, FLOPs) of one op, or None for an op that is not a product or attention.

    Under inference mode (the sampler's) a dispatch mode sees `linear`, `matmul` and
    `scaled_dot_product_attention` whole, not the `mm` and attention kernels they become with
    autograd on, so those have formulas here too. Attention is q k^T and p v: 4 x |q| x keys, with
    as many key heads as query heads or fewer (grouped-query attention)."""
    packet = func._overloadpacket
    if packet is torch.ops.quantized.linear_dynamic_fp16:
        return FP16_PACK, 2 * args[0].numel() * out.shape[-1]
    if packet in (torch.ops.aten.linear, ONEDNN_LINEAR_OP):
        return _gemm(args[0].dtype), 2 * args[0].numel() * args[1].shape[0]
    if packet is torch.ops.aten.matmul:
        return _gemm(args[0].dtype), 2 * out.numel() * args[0].shape[-1]
    if packet in (torch.ops.aten.scaled_dot_product_attention, torch.ops.aten._scaled_dot_product_flash_attention_for_cpu):
        return ATTENTION, 4 * args[0].numel() * args[1].shape[-2]
    if packet is torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        return ATTENTION, sdpa_backward_flop_count(args[0].shape, args[1].shape, args[2].shape, args[3].shape)
    formula = flop_registry.get(packet)  # torch's formulas, registered already wrapped to take tensors
    if formula is None:
        return None
    if "attention" in str(packet):
        return ATTENTION, formula(*args, **kwargs, out_val=out)
    # mm(a, b), bmm(a, b); addmm(bias, a, b), baddbmm(bias, a, b): the product's dtype is a's.
    a = args[1] if packet in (torch.ops.aten.addmm, torch.ops.aten.baddbmm) else args[0]
    return _gemm(a.dtype), formula(*args, **kwargs, out_val=out)


PRODUCT_WORDS = ("mm", "linear", "matmul", "attention", "conv", "einsum", "dot")
"""An op whose name holds one of these and that no formula counted is reported (`FlopTally.uncounted`),
so a kernel that a new torch or transformers version calls cannot drop out of the count unseen."""


class FlopTally(TorchDispatchMode):
    """FLOPs of every product and attention call, keyed by (step, phase, kernel).

    The phase is the innermost open one: `enter`/`leave` are called by the patched `Timings.timed`
    (and around the judge); each entry of the `step` phase starts the next step."""

    def __init__(self) -> None:
        super().__init__()
        self.flops: dict[tuple[int, str, str], int] = defaultdict(int)
        self.stack: list[str] = []
        self.step = 0
        self.uncounted: Counter[str] = Counter()

    def enter(self, phase: str) -> None:
        if phase == "step":
            self.step += 1
        self.stack.append(phase)

    def leave(self) -> None:
        self.stack.pop()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """`enter` and `leave` around a block, also when it raises."""
        self.enter(name)
        try:
            yield
        finally:
            self.leave()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        counted = _kernel_and_flops(func, args, kwargs, out)
        if counted is None:
            if any(w in str(func) for w in PRODUCT_WORDS) and "prepack" not in str(func):  # packing is no product
                self.uncounted[str(func)] += 1
        elif counted[1]:
            phase = self.stack[-1] if self.stack else "outside"
            self.flops[(self.step, phase, counted[0])] += int(counted[1])
        return out

    def rows(self) -> list[dict[str, Any]]:
        return [{"step": s, "phase": p, "kernel": k, "flops": n} for (s, p, k), n in sorted(self.flops.items())]


def count_train(out: Path, steps: int, sets: list[str], into: Path) -> None:
    """Run `train --preset cpu-demo` in this process under a `FlopTally`; write its rows to `into`."""
    from selfredteam.cli import app
    from selfredteam.judges.embedded import EmbeddedJudge
    from selfredteam.rl import timing

    tally = FlopTally()
    plain_timed, plain_judge = timing.Timings.timed, EmbeddedJudge.judge

    @contextlib.contextmanager
    def timed(self, phase: str):  # noqa: ANN001, ANN202
        with tally.phase(phase), plain_timed(self, phase):
            yield

    def judge(self, pairs):  # noqa: ANN001, ANN202
        with tally.phase("judge"):
            return plain_judge(self, pairs)

    timing.Timings.timed, EmbeddedJudge.judge = timed, judge
    args = timed_train_cli(out, steps, sets)[3:]  # the same arguments, without the interpreter and entry
    try:
        with tally:
            app(args, prog_name="selfredteam", standalone_mode=False)
    finally:
        timing.Timings.timed, EmbeddedJudge.judge = plain_timed, plain_judge
    into.write_text(json.dumps({"rows": tally.rows(), "uncounted": dict(tally.uncounted)}))


def probe_rates() -> dict[str, float]:
    """This machine's FLOP/s per kernel: a frozen linear of a prefill's shape ([1024, 896] x [896, 4864],
    through `cpu_fastpath.frozen_linear`, the kernel prefill and the learner's forwards use) in fp32, and in
    bf16 where the CPU has it natively (what `model.dtype=auto` computes in there); and one
    decode row-step's linears of the embedded model (24 layers + the 152k head) at 8 rows through
    fbgemm's fp16 pack."""
    from selfredteam.policy.cpu_fastpath import fp16_gemm_available, frozen_linear
    from selfredteam.policy.hf import cpu_has_native_bf16

    rates = {}
    for dt in [torch.float32, *([torch.bfloat16] if cpu_has_native_bf16() else [])]:
        a, w = torch.randn(1024, 896, dtype=dt), torch.randn(4864, 896, dtype=dt)
        rates[_gemm(dt)] = flop_rate(lambda a=a, w=w: frozen_linear(a, w), 2 * 1024 * 896 * 4864, warmup=2)
    if fp16_gemm_available():
        shapes = [(896, 896), (128, 896), (128, 896), (896, 896), (4864, 896), (4864, 896), (896, 4864)] * 24
        shapes.append((151936, 896))
        packs = [torch.ops.quantized.linear_prepack_fp16(torch.randn(o, i) * 0.02, None) for o, i in shapes]
        xs = {i: torch.randn(8, i) for _, i in shapes}

        def step() -> None:
            for (_, i), p in zip(shapes, packs):
                torch.ops.quantized.linear_dynamic_fp16(xs[i], p)

        rates[FP16_PACK] = flop_rate(step, sum(2 * 8 * o * i for o, i in shapes), warmup=2)
    return rates


def floor_seconds(by_kernel: dict[str, int], rates: dict[str, float]) -> float:
    """Seconds for these FLOPs at the measured rates; attention and unprobed dtypes at the fp32 GEMM's."""
    return sum(n / rates.get(k, rates[_gemm(torch.float32)]) for k, n in by_kernel.items())


def table(flop_rows: list[dict[str, Any]], metrics: list[dict[str, Any]], rates: dict[str, float]) -> list[str]:
    """Markdown rows: per step and phase, FLOPs by kernel, the floor and the measured seconds."""
    kernels = sorted({r["kernel"] for r in flop_rows})
    known = {p for p, _, _ in PHASES}
    lines = ["| step | phase | " + " | ".join(f"{k} TFLOP" for k in kernels) + " | floor | measured | floor / measured |",
             "|---" * (len(kernels) + 5) + "|"]
    for m in metrics:
        step = m["step"]
        per: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for r in flop_rows:
            if r["step"] == step:
                phase = r["phase"] if r["phase"] in known else "other"
                per[phase][r["kernel"]] += r["flops"]
                per["step"][r["kernel"]] += r["flops"]
        for phase, title, key in [*PHASES, ("other", "other", None), ("step", "**step**", "timing/step_s")]:
            if phase not in per and phase == "other":
                continue
            floor = floor_seconds(per[phase], rates)
            seconds = m.get(key, float("nan")) if key else float("nan")
            cells = " | ".join(f"{per[phase].get(k, 0) / 1e12:.3f}" for k in kernels)
            share = f"{floor / seconds:.0%}" if seconds == seconds and seconds > 0 else "-"
            lines.append(f"| {step} | {title} | {cells} | {floor:.1f} s | {seconds:.1f} s | {share} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides (both runs)")
    ap.add_argument("--count-into", type=Path, help=argparse.SUPPRESS)  # the counting child's own mode
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sets = [*args.set, "train.time_limit_min=0"]  # counting is slower; a limit would cut that run short
    if args.count_into:
        count_train(args.out, args.steps, sets, args.count_into)
        return
    with tempfile.TemporaryDirectory() as tmp:
        timed, counted, into = Path(tmp) / "timed", Path(tmp) / "counted", Path(tmp) / "flops.json"
        before = probe_rates()
        subprocess.run(timed_train_cli(timed, args.steps, sets), check=True, stdout=subprocess.DEVNULL)
        after = probe_rates()
        runtime = json.loads((timed / "runtime.json").read_text())
        subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--out", str(counted),
                        "--count-into", str(into), *[x for s in args.set for x in ("--set", s)]],
                       check=True, stdout=subprocess.DEVNULL)
        metrics = read_jsonl(timed / "metrics.jsonl")
        check = read_jsonl(counted / "metrics.jsonl")
        counts = json.loads(into.read_text())
    flop_rows = counts["rows"]
    rates = {k: (before[k] + after[k]) / 2 for k in before}
    print(f"`train --preset cpu-demo`, {args.steps} step(s); {cpu_name()}; dtype {runtime['dtype']} ({runtime['why']})")
    print("rates (GFLOP/s, before / after the timed run): " + ", ".join(
        f"{k} {before[k] / 1e9:.1f} / {after[k] / 1e9:.1f}" for k in sorted(before)))
    print("response tokens per step, timed / counted run (equal = the same games): "
          + ", ".join(f"{step_tokens(a)} / {step_tokens(b)}" for a, b in zip(metrics, check)))
    print("ops named like products that no formula counted: " + (", ".join(
        f"{k} x{n}" for k, n in sorted(counts["uncounted"].items())) or "none") + "\n")
    print("\n".join(table(flop_rows, metrics, rates)))


if __name__ == "__main__":
    main()
