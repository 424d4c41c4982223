"""Faster linears on CPU: small-batch ones as `W @ x^T` or through fp16 weights, many-row fp32 ones
with frozen weights through oneDNN.

During sampling every linear layer sees only a few rows (one new token per sequence), so a
decode step is bound by reading the weights, not by arithmetic. Two measured fixes (2-core
AVX2 dev machine, fp32 Qwen2-0.5B, batch 8; benchmarks/rollout.py):

- `W @ x^T` instead of MKL's `linear(x, W)` for 2-32 rows: the 152k-row LM head 122 -> 53 ms,
  a whole decode step 0.47 -> 0.34 s. Same numbers up to float summation order (3e-5).
- fbgemm's fp16 GEMM (`model.cpu_fp16_weights`, on by default): frozen weights packed once as
  fp16, products accumulated in fp32, activations stay fp32. Half the bytes per step: the MLP
  gate+up projections (9728 x 896) 4.0 -> 1.1 ms, the LM head 60 -> 34 ms, generate 20.8 -> 36.9
  tok/s. On the embedded model the logits moved by at most 7e-5 (its weights come from a 4-bit
  GGUF and are nearly fp16-exact; a bf16 checkpoint converts to fp16 almost losslessly too).

Only inference without autograd on the CPU takes these paths (a switched model moved to CUDA runs
nn.Linear's kernel). Only
weights that do not require grad are packed (with LoRA: the whole frozen base), and a pack is
rebuilt whenever the weight tensor is replaced or modified in place through the parameter.

bf16 models (`model.dtype=auto` on CPUs with native bf16) take the fp16 path too: their decode
steps read the same fp16 pack (bf16 -> fp16 is exact for weights in fp16's normal range), the
activations are widened to fp32 for the product and rounded back to bf16, while prefill and the
learner keep the native bf16 kernels, which are the faster ones there. On a 2-core AVX512-BF16
EPYC at batch 8: decode step 0.145 s (bf16) -> 0.058 s, prefill 2.6 s (bf16) instead of 6.7 s
(fp32 activations); BENCHMARKS.md has the table.

Prefill-sized inputs (> 32 rows) and the learner's passes, in fp32 on an x86 CPU, run through
oneDNN's linear (`frozen_linear`) when the weight is frozen (with LoRA: the whole base), the
kernel inductor uses for CPU linears, rather than MKL's `linear`: on a 2-core Zen 1 EPYC (AVX2)
MKL's fp32 `x W^T` ran the embedded model's shapes at 49-61 GFLOP/s and oneDNN's at 63-70
(benchmarks/linear_kernels.py; BENCHMARKS.md, issue 30). Same products up to float summation
order (~5e-6 on outputs of ~1). The gradient to the input (LoRA's top layers) stays MKL's
`grad @ W`, faster there than oneDNN's with the weight transposed. No weight is copied.
bf16 weights keep the stock path (on CPUs with native bf16 it is oneDNN already).
"""

from __future__ import annotations

import platform
from typing import Any

import torch

MIN_ROWS, MAX_ROWS = 2, 32
_FP16_PATH_DTYPES = (torch.float32, torch.bfloat16)
ONEDNN_LINEAR_OP = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
"""oneDNN's linear (inductor's CPU kernel), or None in a build without it."""
ONEDNN_LINEAR = (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
                 and ONEDNN_LINEAR_OP is not None)
"""Whether `frozen_linear` may use oneDNN: x86 builds ship it (measured there only)."""


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return ONEDNN_LINEAR_OP(x, weight, bias, "none", [], "")


class _FrozenWeightLinear(torch.autograd.Function):
    """x W^T + b through oneDNN, differentiable in x only (W and b frozen): oneDNN's op has no
    autograd formula of its own."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        (weight,) = ctx.saved_tensors
        return grad @ weight, None, None


def frozen_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T + b, as `torch.nn.functional.linear`; through oneDNN for fp32 on an x86 CPU when W
    (and b) are frozen, the faster kernel for many rows there (module docstring). Anything else
    (a trained weight, bf16, CUDA) takes the stock kernel."""
    if (ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not weight.requires_grad and (bias is None or not bias.requires_grad)):
        if torch.is_grad_enabled() and x.requires_grad:
            return _FrozenWeightLinear.apply(x, weight, bias)
        return _onednn_linear(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


def fp16_gemm_available() -> bool:
    """fbgemm's fp16-weight GEMM ships in x86 builds of PyTorch (not on ARM)."""
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(
        torch.ops.quantized, "linear_prepack_fp16")


class SmallBatchLinear(torch.nn.Linear):
    """nn.Linear with faster no-autograd forwards for few rows, and a frozen fp32 weight through
    oneDNN for many (`frozen_linear`); same parameters."""

    fp16_weights = False
    """Read the (frozen) weight as a packed fp16 copy in the no-autograd small-row path."""
    _fp16: Any = None
    _fp16_key: tuple | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.dim() >= 2 else 1
        if rows > MAX_ROWS:
            return frozen_linear(x, self.weight, self.bias)
        if torch.is_grad_enabled() or x.device.type != "cpu":
            return super().forward(x)
        if self.fp16_weights and not self.weight.requires_grad and x.dim() >= 2 and x.dtype in _FP16_PATH_DTYPES:
            out = torch.ops.quantized.linear_dynamic_fp16(x.float(), self._packed_fp16())
            return out if x.dtype == torch.float32 else out.to(x.dtype)
        if rows < MIN_ROWS or self.weight.dtype != torch.float32:
            return super().forward(x)
        out = torch.matmul(self.weight, x.reshape(rows, x.shape[-1]).t()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def _packed_fp16(self) -> Any:
        """The fp16 pack of the current weight; rebuilt when the weight (or bias) was replaced or
        changed through the parameter (the key is storage address + autograd version counter)."""
        key = tuple((t.data_ptr(), t._version) for t in (self.weight, self.bias) if t is not None)
        if self._fp16_key != key:
            bias = None if self.bias is None else self.bias.detach().float()
            self._fp16 = torch.ops.quantized.linear_prepack_fp16(self.weight.detach().float(), bias)
            self._fp16_key = key
        return self._fp16

    def __getstate__(self) -> dict:
        # A copy (deepcopy, pickling) re-packs from its own weights on first use.
        state = dict(self.__dict__)
        state.pop("_fp16", None)
        state.pop("_fp16_key", None)
        return state


def use_small_batch_linears(model: torch.nn.Module, fp16_weights: bool = False) -> int:
    """Switch the CPU `nn.Linear`s of `model` to `SmallBatchLinear`, in place: every fp32 one, and
    the bf16 ones when `fp16_weights` is on and fbgemm has the fp16 GEMM (the `W @ x^T` path was
    measured for fp32 only, so a bf16 linear switches only for the fp16 pack).

    A class swap, not a wrapper: parameters, state dict names, `isinstance(m, nn.Linear)` (what
    peft looks for) and deepcopy all stay as they were. Returns how many layers switched.
    """
    fp16 = fp16_weights and fp16_gemm_available()
    n = 0
    for mod in model.modules():
        if type(mod) is not torch.nn.Linear or mod.weight.device.type != "cpu":
            continue
        if mod.weight.dtype == torch.float32 or (fp16 and mod.weight.dtype == torch.bfloat16):
            mod.__class__ = SmallBatchLinear
            mod.fp16_weights = fp16
            n += 1
    return n


def uses_fp16_weights(model: torch.nn.Module) -> bool:
    """Whether sampling from `model` reads packed fp16 weights (then merging a LoRA adapter
    into the base for sampling would only force re-packing: sample with it live instead)."""
    return any(isinstance(m, SmallBatchLinear) and m.fp16_weights for m in model.modules())
