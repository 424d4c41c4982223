"""Load a training checkpoint as a merged, standalone model; export it as an HF dir (transformers / vLLM)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from selfredteam.config import ModelConfig, TrainConfig
from selfredteam.errors import UserError
from selfredteam.rl.checkpoint import find_checkpoint, read_state


def load_merged(checkpoint: Path, role: str = "defender", dtype: Any = None) -> tuple[Any, Any, Path]:
    """(model, tokenizer, checkpoint dir): the LoRA adapter (the `role` adapter with role-adapters)
    merged into the base weights, or the full fine-tuned weights."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from selfredteam.policy.hf import load_model_and_tokenizer

    dtype = dtype or torch.float32
    ckpt = find_checkpoint(checkpoint)
    saved = read_state(ckpt)["config"]
    model_cfg = ModelConfig(**saved["model"])
    if (ckpt / "model").is_dir():
        model = AutoModelForCausalLM.from_pretrained(str(ckpt / "model"), use_safetensors=True, dtype=dtype)
        _, tokenizer = load_model_and_tokenizer(model_cfg, torch.device("cpu"), dtype)
        return model, tokenizer, ckpt
    base, tokenizer = load_model_and_tokenizer(model_cfg, torch.device("cpu"), dtype)
    train_cfg = TrainConfig(**{k: v for k, v in saved["train"].items()
                               if k in {f.name for f in dataclasses.fields(TrainConfig)}})
    sub = ckpt / "adapter"
    if train_cfg.parameter_sharing == "role-adapters":
        if not (sub / role).is_dir():
            raise UserError(f"{ckpt} has no adapter for role {role!r}.")
        sub = sub / role
    return PeftModel.from_pretrained(base, str(sub)).merge_and_unload(), tokenizer, ckpt


def export_merged(checkpoint: Path, out: Path, role: str = "defender") -> Path:
    model, tokenizer, ckpt = load_merged(checkpoint, role)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(str(out))
    (out / "selfredteam_export.txt").write_text(f"exported from {ckpt} (role: {role})\n")
    return out
