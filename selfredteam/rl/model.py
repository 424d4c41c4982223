"""The trainable policy: LoRA (peft) or full fine-tuning, shared or per-role parameters.

- `shared` (the paper): one set of weights plays both roles; a role is only its prompt.
- `role-adapters` (Anchored Bipolicy Self-Play, arXiv 2605.08427): a frozen base with one
  LoRA adapter per role, so the attacker and defender cannot collapse into self-consistency.
With LoRA the reference policy is the same model with its adapters disabled: no second copy
in memory. Full fine-tuning keeps a frozen copy as the reference (2x weights; on GPUs use
ZeRO-3 / FSDP via accelerate for that).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from selfredteam.config import Config, TrainConfig
from selfredteam.errors import ConfigError
from selfredteam.policy.cpu_fastpath import uses_fp16_weights
from selfredteam.policy.decode import record_outputs
from selfredteam.policy.hf import (
    load_model_and_tokenizer,
    load_policy_model,
    resolve_device,
    resolve_dtype,
    set_threads,
)
from selfredteam.policy.layout import decoder_layers, top_layers_only

ROLES = ("attacker", "defender")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainablePolicy:
    """Owns the model, knows how to select a role's parameters and how to get the reference."""

    def __init__(self, model: Any, tokenizer: Any, sharing: str, reference: Any | None = None,
                 frozen_layers: int = 0) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.sharing = sharing
        self._reference = reference  # only for full fine-tuning
        self.is_lora = reference is None
        self.frozen_layers = frozen_layers if decoder_layers(model) is not None else 0
        """Bottom decoder layers without adapters (LoRA on the top `train.lora_layers` only): the
        policy and the reference compute identical states there, so the learner runs them once.
        Only for the plain layouts whose top layers may run alone (policy/layout.py)."""
        self.sharded = False
        """Set by the learner when FSDP or DeepSpeed shards the model (rl/distributed.py)."""

    def trunk_layer(self) -> torch.nn.Module | None:
        """The last frozen decoder layer (its output is the trunk's), or None without a trunk."""
        return decoder_layers(self.model)[self.frozen_layers - 1] if self.frozen_layers else None

    def capture_trunk(self, store: list[torch.Tensor]) -> contextlib.AbstractContextManager:
        """Append the output of the last frozen layer of every forward pass to `store`."""
        return record_outputs(self.trunk_layer(), store)

    def top_layers_only(self) -> contextlib.AbstractContextManager:
        """Run only the adapted top layers (the caller feeds the trunk's states as inputs_embeds)."""
        return top_layers_only(self.model, self.frozen_layers)

    def adapter_for(self, role: str) -> str:
        return role if self.sharing == "role-adapters" else "default"

    @contextlib.contextmanager
    def role(self, role: str) -> Iterator[None]:
        """Activate the role's adapter (a no-op with shared weights)."""
        if self.is_lora and self.sharing == "role-adapters":
            self.model.set_adapter(self.adapter_for(role))
            # peft marks only the active adapter trainable; keep both in the optimizer.
            for name, p in self.model.named_parameters():
                if "lora_" in name:
                    p.requires_grad_(True)
        yield

    @contextlib.contextmanager
    def reference(self) -> Iterator[Any]:
        """The frozen reference model: the base with adapters disabled, or the frozen copy."""
        if self.is_lora:
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self._reference

    @contextlib.contextmanager
    def sampling(self, role: str = "defender") -> Iterator[Any]:
        """The role's current policy, set up for fast sampling.

        With fp16-packed frozen weights (CPU, policy/cpu_fastpath.py) the adapter stays live: the
        packs of the frozen base stay valid and the LoRA matmuls are tiny; so it does under FSDP,
        where the gathered weights are the all-gather's buffers. Otherwise the adapter is merged
        into the base while sampling (a live adapter on a bf16 base sampled at about half the
        adapter-free speed in our CPU measurements).
        """
        if self.is_lora and (uses_fp16_weights(self.model) or self.sharded):
            with self.role(role):
                yield self.model
        else:
            with self.merged(role) as model:
                yield model

    @contextlib.contextmanager
    def merged(self, role: str = "defender") -> Iterator[Any]:
        """The role's adapter merged into the base weights.

        Unmerging subtracts the delta again, which is not bit-exact: over many steps the base
        weights, and so the reference policy, would drift. We keep the exact base weights and
        copy them back instead. `safe_merge` writes the merged weights to new tensors, so any
        packed copy of the base (cpu_fastpath) sees the change and is rebuilt.
        """
        with self.role(role):
            if not self.is_lora:
                yield self.model
                return
            from peft.tuners.lora import LoraLayer

            layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]
            originals = [m.get_base_layer().weight.detach().clone() for m in layers]
            self.model.merge_adapter(safe_merge=True)
            try:
                yield self.model
            finally:
                self.model.unmerge_adapter()
                with torch.no_grad():
                    for m, w in zip(layers, originals):
                        m.get_base_layer().weight.copy_(w)

    def weights_for_save(self) -> dict[str, torch.Tensor] | None:
        """The weights a checkpoint writes when FSDP or ZeRO-3 shards them (gathered: a collective
        every process calls; LoRA: the adapters only); None when the model can save itself."""
        if not self.sharded:
            return None
        from selfredteam.rl.distributed import full_model_state, gathered_state

        if not self.is_lora:
            return full_model_state(self.model)
        return gathered_state(self.model, lambda name: "lora_" in name)

    def save_pretrained(self, path: Any, weights: dict[str, torch.Tensor] | None) -> None:
        """Write the adapters (LoRA) or the model in HF format (safetensors). `weights`: what
        weights_for_save returned (every process gathers, the main one writes), None when unsharded."""
        self.model.save_pretrained(str(path), safe_serialization=True,
                                   **({"state_dict": weights} if weights is not None else {}))

    def load_adapters(self, ckpt: Path) -> None:
        """A checkpoint's LoRA adapters (what save_pretrained wrote) into the not yet sharded model,
        in place. (A full fine-tune's weights are loaded as the policy model itself: `build_trainable`.)"""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        for name in self.model.peft_config:  # save_pretrained writes the default adapter on top, others in subdirs
            d = ckpt / "adapter" / ("" if name == "default" else name)
            set_peft_model_state_dict(self.model, load_file(str(d / "adapter_model.safetensors")), adapter_name=name)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        if self.is_lora:
            return [p for n, p in self.model.named_parameters() if "lora_" in n]
        return [p for p in self.model.parameters() if p.requires_grad]


def _for_training(model: Any, t: TrainConfig) -> Any:
    """Gradient checkpointing when asked (no KV cache then: it would only hold memory)."""
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model


def build_trainable(cfg: Config, device: torch.device | None = None, ckpt: Path | None = None) -> TrainablePolicy:
    """`device`: set by the data-parallel launcher (each process its own GPU); else from config.
    `ckpt`: a checkpoint to resume, whose weights go in before the learner shards the model (FSDP
    does that when it prepares it)."""
    from peft import LoraConfig, get_peft_model

    t = cfg.train
    set_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    device = device or resolve_device(cfg.model.device)
    # Train in fp32 on CPU (no native bf16 there, see policy/hf.py); bf16 on GPU.
    dtype = resolve_dtype(cfg.model.dtype, device)
    model, tokenizer = load_model_and_tokenizer(cfg.model, device, dtype)
    _for_training(model, t)
    if t.full_finetune:
        if t.parameter_sharing == "role-adapters":
            raise ConfigError("train.parameter_sharing=role-adapters needs LoRA: set train.full_finetune=false.")
        if ckpt:
            # The base as loaded is the reference, and the checkpoint's weights load as the policy
            # through the policy's own loader (a model that needs model.trust_remote_code resumes the
            # way it first loaded). Two models in memory, as in a fresh run, not a third to copy from.
            reference = model
            model = _for_training(load_policy_model(cfg.model, str(ckpt / "model"), device, dtype,
                                                    use_safetensors=True), t)
        else:
            reference = copy.deepcopy(model)
        reference.eval().requires_grad_(False)
        model.train()
        return TrainablePolicy(model, tokenizer, "shared", reference)
    n_layers = model.config.num_hidden_layers
    layers = list(range(n_layers - t.lora_layers, n_layers)) if 0 < t.lora_layers < n_layers else None
    lora = LoraConfig(r=t.lora_rank, lora_alpha=t.lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGETS,
                      layers_to_transform=layers, task_type="CAUSAL_LM")
    if t.parameter_sharing == "role-adapters":
        model = get_peft_model(model, lora, adapter_name="attacker")
        model.add_adapter("defender", lora)
    else:
        model = get_peft_model(model, lora)
    model.train()
    trainable = TrainablePolicy(model, tokenizer, t.parameter_sharing,
                                frozen_layers=n_layers - len(layers) if layers else 0)
    if ckpt:
        trainable.load_adapters(ckpt)
    return trainable
