"""What a model spec names, and the Policy it loads: a hub id or local dir, `embedded`, a `.gguf`,
`openai:URL[#model]`, or a `train` run / checkpoint dir (its LoRA adapter merged into the base).

One place for it, below eval and rl: `eval`, `train --set train.defender_model=…`, the study and
`export` all load a spec the same way.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from selfredteam.checkpoint import find_checkpoint, read_state
from selfredteam.config import ModelConfig, TrainConfig
from selfredteam.errors import UserError
from selfredteam.policy.base import Policy


def is_run_dir(path: Path) -> bool:
    """A `train` run dir or one of its checkpoint dirs."""
    return path.is_dir() and ((path / "checkpoints").is_dir() or (path / "state.json").is_file())


def run_training_pool(spec: str) -> str | None:
    """The seed pool a `train` run dir (or one of its checkpoints) trained on, as `probe --fit`
    spells it (data.seeds and data.extra_seeds joined by `+`), read from the config its checkpoint
    saved; None for any other model. Why: the probe's transferred boundary is the one this model
    was taught, not the one the command's preset would teach."""
    if not is_run_dir(Path(spec)):
        return None
    data = read_state(find_checkpoint(Path(spec)))["config"]["data"]
    return "+".join([data["seeds"], *data["extra_seeds"]])


def eval_model_config(spec: str, cfg: Any) -> Any:
    """The ModelConfig that `spec` stands for (a run dir keeps the command's dtype and device)."""
    if spec.startswith("openai:"):
        url, _, model = spec[len("openai:"):].partition("#")
        return dataclasses.replace(cfg.model, backend="openai", base_url=url,
                                   name_or_path=model or cfg.model.name_or_path)
    if is_run_dir(Path(spec)):
        return dataclasses.replace(cfg.model, backend="transformers")
    return dataclasses.replace(cfg.model, name_or_path=spec)


def policy_from_spec(spec: str, cfg: Any, role: str = "defender") -> Policy:
    """`embedded`, an HF id/dir/.gguf, a `train` run or checkpoint dir, or `openai:URL[#model]`.
    `role` picks a run's adapter when it trained one per role (train.parameter_sharing=role-adapters)."""
    from selfredteam.policy import build_policy

    model_cfg = eval_model_config(spec, cfg)
    if not is_run_dir(Path(spec)):
        return build_policy(dataclasses.replace(cfg, model=model_cfg))
    import torch

    from selfredteam.policy.hf import TransformersPolicy, resolve_device, resolve_dtype, set_threads

    set_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)  # as TransformersPolicy.from_config does: seeded sampling
    device = resolve_device(model_cfg.device)
    model, tokenizer, ckpt = load_merged(Path(spec), role=role, dtype=resolve_dtype(model_cfg.dtype, device))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    name = f"checkpoint:{ckpt}" + ("" if role == "defender" else f":{role}")
    return TransformersPolicy(model.to(device).eval(), tokenizer, name, cfg.generation.batch_size,
                              cfg.generation.max_prompt_length)


def load_merged(checkpoint: Path, role: str = "defender", dtype: Any = None) -> tuple[Any, Any, Path]:
    """(model, tokenizer, checkpoint dir): the LoRA adapter (the `role` adapter with role-adapters)
    merged into the base weights, or the full fine-tuned weights."""
    import torch
    from peft import PeftModel

    from selfredteam.policy.hf import load_causal_lm, load_model_and_tokenizer

    dtype = dtype or torch.float32
    ckpt = find_checkpoint(checkpoint)
    saved = read_state(ckpt)["config"]
    model_cfg = ModelConfig(**saved["model"])
    if (ckpt / "model").is_dir():
        model = load_causal_lm(model_cfg, str(ckpt / "model"), dtype, use_safetensors=True)
        _, tokenizer = load_model_and_tokenizer(model_cfg, torch.device("cpu"), dtype)
        return model, tokenizer, ckpt
    base, tokenizer = load_model_and_tokenizer(model_cfg, torch.device("cpu"), dtype)
    sub = ckpt / "adapter"
    if saved["train"].get("parameter_sharing", TrainConfig.parameter_sharing) == "role-adapters":
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
