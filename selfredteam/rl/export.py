"""Export a training checkpoint as a merged, standalone HF model dir (transformers / vLLM)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from selfredteam.config import ModelConfig, TrainConfig
from selfredteam.errors import UserError
from selfredteam.rl.checkpoint import find_checkpoint, read_state


def export_merged(checkpoint: Path, out: Path, role: str = "defender") -> Path:
    """Merge the LoRA adapter (the `role` adapter with role-adapters) into the base weights."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from selfredteam.policy.hf import load_model_and_tokenizer

    ckpt = find_checkpoint(checkpoint)
    saved = read_state(ckpt)["config"]
    model_cfg = ModelConfig(**saved["model"])
    if (ckpt / "model").is_dir():
        model = AutoModelForCausalLM.from_pretrained(str(ckpt / "model"), use_safetensors=True)
        _, tokenizer = load_model_and_tokenizer(model_cfg, torch.device("cpu"), torch.float32)
    else:
        base, tokenizer = load_model_and_tokenizer(model_cfg, torch.device("cpu"), torch.float32)
        train_cfg = TrainConfig(**{k: v for k, v in saved["train"].items()
                                   if k in {f.name for f in dataclasses.fields(TrainConfig)}})
        sub = ckpt / "adapter"
        if train_cfg.parameter_sharing == "role-adapters":
            if not (sub / role).is_dir():
                raise UserError(f"{ckpt} has no adapter for role {role!r}.")
            sub = sub / role
        model = PeftModel.from_pretrained(base, str(sub)).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(str(out))
    (out / "selfredteam_export.txt").write_text(f"exported from {ckpt} (role: {role})\n")
    return out


__all__ = ["export_merged"]
