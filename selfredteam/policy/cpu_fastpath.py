"""A faster decode step on CPU: small-batch linears as `W @ x^T`, or through fp16 weights.

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
nn.Linear's kernel); prefill-sized inputs (> 32 rows) and
everything with autograd (the learner's gradient passes) run the stock kernel. Only
weights that do not require grad are packed (with LoRA: the whole frozen base), and a pack is
rebuilt whenever the weight tensor is replaced or modified in place through the parameter.

bf16 models (`model.dtype=auto` on CPUs with native bf16) take the fp16 path too: their decode
steps read the same fp16 pack (bf16 -> fp16 is exact for weights in fp16's normal range), the
activations are widened to fp32 for the product and rounded back to bf16, while prefill and the
learner keep the native bf16 kernels, which are the faster ones there. On a 2-core AVX512-BF16
EPYC at batch 8: decode step 0.145 s (bf16) -> 0.058 s, prefill 2.6 s (bf16) instead of 6.7 s
(fp32 activations); BENCHMARKS.md has the table.
"""

from __future__ import annotations

from typing import Any

import torch

MIN_ROWS, MAX_ROWS = 2, 32
_FP16_PATH_DTYPES = (torch.float32, torch.bfloat16)


def fp16_gemm_available() -> bool:
    """fbgemm's fp16-weight GEMM ships in x86 builds of PyTorch (not on ARM)."""
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(
        torch.ops.quantized, "linear_prepack_fp16")


class SmallBatchLinear(torch.nn.Linear):
    """nn.Linear with faster no-autograd forwards for few rows (same parameters)."""

    fp16_weights = False
    """Read the (frozen) weight as a packed fp16 copy in the no-autograd small-row path."""
    _fp16: Any = None
    _fp16_key: tuple | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.dim() >= 2 else 1
        if rows > MAX_ROWS or torch.is_grad_enabled() or x.device.type != "cpu":
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
