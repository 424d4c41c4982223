"""What a command runs on: device, dtype and why, printed at start and saved with every run.

`model.dtype=auto` picks per machine (bf16 on CUDA; on CPU bf16 only with native bf16
instructions), so the same command computes in different dtypes on two CPUs of one cloud
instance kind. A result is only reproducible when its run says which one it got.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from selfredteam.config import ModelConfig

RUNTIME_FILE = "runtime.json"


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name with its family and model numbers (from /proc/cpuinfo on Linux), e.g.
    `AMD EPYC, family 23 model 1`.

    Why the numbers: a cloud VM often reports only `AMD EPYC`, and two such VMs with the same flags
    measured 2x apart (Zen 1 runs 256-bit AVX2 as two 128-bit halves: 60-65 against 100-115 GFLOP/s
    of fp32 GEMM on 2 cores, BENCHMARKS.md). A timing is only comparable with the CPU it names."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    except OSError:
        text = ""
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    if fields.get("cpu family") and fields.get("model"):
        return f"{name}, family {fields['cpu family']} model {fields['model']}"
    return name


def cpu_kind() -> str:
    """`AVX-512-BF16` / `AMX-BF16` (native bf16: `auto` picks bf16) or `AVX2, no native bf16`."""
    from selfredteam.policy.hf import cpu_bf16_flags

    flags = cpu_bf16_flags()
    if flags:
        return "/".join(f.upper().replace("_", "-").replace("AVX512", "AVX-512") for f in flags)
    try:
        avx2 = "avx2" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        avx2 = False
    return "AVX2, no native bf16" if avx2 else "no native bf16"


def runtime_info(model: ModelConfig, threads: int = 0) -> dict[str, Any]:
    """Device, dtype, the reason for the dtype, and the machine facts behind it."""
    if model.backend == "openai":
        return {"backend": "openai", "device": "remote endpoint", "dtype": "chosen by the server",
                "why": f"served at {model.base_url}"}
    import torch

    from selfredteam.policy.cpu_fastpath import fp16_gemm_available
    from selfredteam.policy.hf import (
        choose_dtype,
        cpu_bf16_flags,
        keep_freed_memory,
        resolve_device,
    )

    device = resolve_device(model.device)
    dtype, why = choose_dtype(model.dtype, device)
    info: dict[str, Any] = {"backend": "transformers", "device": str(device),
                            "dtype": str(dtype).removeprefix("torch."), "why": why,
                            "threads": threads if threads > 0 else os.cpu_count(), "torch": torch.__version__}
    if model.attn_implementation:
        info["attn_implementation"] = model.attn_implementation
    if device.type == "cpu":
        info |= {"cpu": cpu_name(), "cpu_bf16_flags": cpu_bf16_flags(),
                 "fp16_weights": bool(model.cpu_fp16_weights and dtype in (torch.float32, torch.bfloat16)
                                     and fp16_gemm_available()),
                 "keep_freed_memory": keep_freed_memory()}
    else:
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe(info: dict[str, Any]) -> str:
    """One line for the console: `device cpu (AMD EPYC, 2 threads), dtype bfloat16 (bf16: CPU has avx512_bf16)`."""
    where = info.get("cpu") or info.get("gpu")
    detail = f" ({where}, {info['threads']} threads)" if info.get("cpu") else f" ({where})" if where else ""
    extra = ", frozen weights read as fp16 in decode steps" if info.get("fp16_weights") else ""
    return f"device {info['device']}{detail}, dtype {info['dtype']} ({info['why']}{extra})"


def save_runtime(out_dir: Path, info: dict[str, Any]) -> Path:
    path = Path(out_dir) / RUNTIME_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path
