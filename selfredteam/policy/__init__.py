"""Policy backends behind one protocol (see `base.Policy`); `build_policy` picks one from config."""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfredteam.policy.base import Generation, Policy, SamplingParams

if TYPE_CHECKING:
    from selfredteam.config import Config

__all__ = ["Generation", "Policy", "SamplingParams", "build_policy"]


def build_policy(cfg: Config) -> Policy:
    """Construct the configured backend (imports heavy dependencies lazily)."""
    if cfg.model.backend == "openai":
        from selfredteam.policy.openai_compat import OpenAIChatPolicy

        return OpenAIChatPolicy.from_config(cfg.model, cfg.generation.max_prompt_length)
    from selfredteam.policy.hf import TransformersPolicy

    return TransformersPolicy.from_config(cfg.model, generation_batch_size=cfg.generation.batch_size,
                                          threads=cfg.run.threads, seed=cfg.run.seed,
                                          max_prompt_tokens=cfg.generation.max_prompt_length)
