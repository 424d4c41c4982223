"""Where a causal LM's pieces are: its decoder stack and LM head, for the layouts that may be run
in pieces (the learner's head on response tokens only, the top layers alone from cached trunk
states, a prompt prefix's cached keys and values in the sampler)."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from typing import Any

import torch

PLAIN_LAYOUT_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}
"""Causal LMs of the plain layout: the decoder feeds `inputs_embeds` to its first layer unchanged
(Gemma, for one, rescales them) and the logits are exactly `lm_head(final hidden state)` (no
softcapping, unlike Gemma 2). Only these may be run in pieces: the decoder and the head apart
(rl/logprobs.py), or the top layers alone from cached states (`top_layers_only`)."""


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder stack, LM head) of a plain or peft-wrapped HF causal LM of the plain layout; None
    otherwise, and for models that must be called whole (a DDP wrapper; an FSDP-sharded model,
    whose root gathers the embeddings and the head in its own forward; a DeepSpeed engine, whose
    forward tells ZeRO that a new micro-batch starts: without it the next backward overwrites the
    accumulated gradients instead of adding to them. The engine passes unknown attributes such
    as get_base_model to the module, so it must be recognised before they are read)."""
    import sys

    from torch.distributed.fsdp import FSDPModule

    deepspeed = sys.modules.get("deepspeed")
    if isinstance(model, FSDPModule) or (deepspeed is not None and isinstance(model, deepspeed.DeepSpeedEngine)):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(getattr(base, "config", None), "model_type", None) not in PLAIN_LAYOUT_MODEL_TYPES:
        return None
    decoder = getattr(base, getattr(base, "base_model_prefix", ""), None)
    head = base.get_output_embeddings()
    return (decoder, head) if decoder is not None and head is not None else None


def cache_kwarg(model: torch.nn.Module) -> str:
    """The name the model's forward takes a KV cache by (`cache` from transformers 5.2x on,
    `past_key_values` before)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_kwarg(type(base))


@functools.cache
def _cache_kwarg(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The decoder's `layers` of a plain-layout model (None otherwise)."""
    parts = decoder_and_head(model)
    layers = getattr(parts[0], "layers", None) if parts else None
    return layers if isinstance(layers, torch.nn.ModuleList) else None


@contextlib.contextmanager
def top_layers_only(model: torch.nn.Module, skip: int) -> Iterator[None]:
    """Run only the decoder layers from `skip` on: the caller feeds the states after layer `skip`-1
    as inputs_embeds. Each layer keeps its own index, so a cache sees the right layer numbers."""
    decoder = decoder_and_head(model)[0]
    full = decoder.layers
    decoder.layers = torch.nn.ModuleList(list(full)[skip:])
    try:
        yield
    finally:
        decoder.layers = full


@contextlib.contextmanager
def record_outputs(layer: torch.nn.Module, store: list[torch.Tensor]) -> Iterator[None]:
    """Append `layer`'s output hidden states of every forward pass to `store` (detached)."""
    def hook(module: Any, args: Any, output: Any) -> None:
        store.append((output[0] if isinstance(output, tuple) else output).detach())

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
