"""Prefill for the sampling loop (policy/decode.py): shared prompt prefixes computed once, prompts
prefilled in groups of similar length, and the groups' caches joined into one batch.

Prefill is compute-bound on a CPU (every prompt token costs a full pass through the model), and
the game's prompts share long prefixes: the chat template and a role's instructions come before
the seed. In the cpu-demo's first pass (2-core AVX2 machine) 442 of ~1,060 prompt tokens were such
prefixes (the attacker's instructions, 80 tokens; the defender's system prompt, 24). So:
- rows that share a prefix run it once, and their own suffixes on top of its keys and values;
- a prefix's keys and values in the bottom layers that nothing trains (all of them in eval, the
  frozen trunk under LoRA on the top layers) are kept across calls (`PrefixCache`), keyed by the
  prefix's tokens and checked against the weights they came from. A kept prefix costs only its
  top layers, from the trunk states kept with it;
- suffixes of similar length are prefilled together: a padded token costs as much as a real one.
Rows then lie in one cache as [left padding | prefix | inner padding | suffix], masked and with
explicit positions, so every row sees exactly its own prompt at its own positions.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from transformers.cache_utils import DynamicCache

from selfredteam.policy.layout import cache_kwarg, decoder_layers, record_outputs, top_layers_only

PREFIX_BLOCK = 8
"""A shared prefix is cut to a multiple of this many tokens, so the template part is found again
in the next call whatever the next seeds happen to share with each other."""

MAX_PREFIXES = 32
"""Prefixes kept across calls (least recently used dropped first); ~2 MB each on the embedded model."""


@dataclass
class _Kept:
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    """Per frozen layer, [1, kv heads, L, head dim]."""
    trunk: torch.Tensor | None
    """[L, hidden]: the states after the last frozen layer (inputs of the first trainable one)."""


class PrefixCache:
    """Keys and values of prompt prefixes in the layers that nothing trains, kept across calls.

    The frozen layers are counted afresh on every call (the bottom layers with no parameter that
    requires grad) and the kept entries are dropped as soon as any of their parameters was
    replaced or changed in place (storage address and version counter), so a kept prefix is
    always that of the current weights."""

    def __init__(self, capacity: int = MAX_PREFIXES) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[tuple[int, ...], _Kept] = OrderedDict()
        self._weights: Any = None
        self.hits = self.misses = 0

    def frozen(self, layers: torch.nn.ModuleList) -> int:
        """How many bottom layers nothing trains; drops every entry when their weights changed."""
        n = 0
        for layer in layers:
            if any(p.requires_grad for p in layer.parameters()):
                break
            n += 1
        weights = (n, tuple((p.data_ptr(), p._version, p.dtype) for layer in layers[:n] for p in layer.parameters()))
        if weights != self._weights:
            self.entries.clear()
            self._weights = weights
        return n

    def get(self, key: tuple[int, ...]) -> _Kept | None:
        kept = self.entries.get(key)
        if kept is not None:
            self.entries.move_to_end(key)
            self.hits += 1
        else:
            self.misses += 1
        return kept

    def put(self, key: tuple[int, ...], kept: _Kept) -> None:
        self.entries[key] = kept
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)


def common_prefix(seqs: list[list[int]]) -> int:
    """How many leading tokens all of `seqs` share (the sampler's shared prefixes here, the
    learner's packed micro-batches in rl/logprobs.py)."""
    n = min(map(len, seqs))
    for k in range(n):
        if any(s[k] != seqs[0][k] for s in seqs[1:]):
            return k
    return n


def plan_prefixes(prompts: list[list[int]], kept: Any = ()) -> list[int]:
    """The prefix length each row shares: the longest of (a) what it has in common with another
    row of this call, cut to a multiple of PREFIX_BLOCK, and (b) a kept prefix it starts with.
    A prefix always leaves the row at least one token of its own (its logits start sampling)."""
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    shared = [0] * len(prompts)
    for a, b in zip(order, order[1:]):
        n = common_prefix([prompts[a], prompts[b]])
        shared[a], shared[b] = max(shared[a], n), max(shared[b], n)
    out = []
    for i, p in enumerate(prompts):
        n = min(shared[i], len(p) - 1) // PREFIX_BLOCK * PREFIX_BLOCK
        for key in kept:
            if n < len(key) < len(p) and tuple(p[: len(key)]) == key:
                n = len(key)
        out.append(n)
    return out


def length_groups(lengths: list[int], waste: float = 0.15) -> list[list[int]]:
    """Indices grouped for prefill, shortest first: a group grows while its left padding stays
    within `waste` of its tokens (a padded token costs a real one in a compute-bound prefill)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups:
            g = groups[-1]
            width, real = lengths[i], sum(lengths[j] for j in g) + lengths[i]
            if width * (len(g) + 1) - real <= waste * real:
                g.append(i)
                continue
        groups.append([i])
    return groups


class _Part(NamedTuple):
    """Some rows prefilled together: their cache ([rows, kv, width, D] per layer) and the rest."""

    rows: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]
    logits: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    states: dict[int, torch.Tensor]


@dataclass
class Prefilled:
    """The prompts' joint cache (one row per prompt, in `order`), the logits that start sampling,
    the 2-D attention mask, each row's last position, and its captured prompt states."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    order: list[int]
    logits: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    states: dict[int, torch.Tensor]


def prefill(model: Any, prompts: list[list[int]], *, pad_id: int, capture: torch.nn.Module | None = None,
            prefixes: PrefixCache | None = None) -> Prefilled:
    """Prefill every prompt (see the module doc). `capture`: a decoder layer whose output states
    each row's prompt gets back (the learner's trunk)."""
    device = next(model.parameters()).device
    key = cache_kwarg(model)
    layers = decoder_layers(model)
    frozen = prefixes.frozen(layers) if prefixes is not None and layers is not None else 0
    # Shared prefixes need a model that runs in pieces, and the captured layer (if any) must be
    # the last frozen one: a prefix's captured states are the trunk states kept with it.
    sharing = layers is not None and (capture is None or (frozen and capture is layers[frozen - 1]))
    kept_keys = list(prefixes.entries) if prefixes is not None and frozen else []
    lengths = plan_prefixes(prompts, kept_keys) if sharing else [0] * len(prompts)
    by_prefix: dict[tuple[int, ...], list[int]] = {}
    for i, n in enumerate(lengths):
        by_prefix.setdefault(tuple(prompts[i][:n]), []).append(i)
    parts = []
    for prefix, rows in by_prefix.items():
        kv, trunk = _prefix(model, layers, prefix, frozen, prefixes, key, device) if prefix else (None, None)
        for group in length_groups([len(prompts[i]) - len(prefix) for i in rows]):
            parts.append(_suffixes(model, [rows[g] for g in group], prompts, len(prefix), kv, trunk, pad_id,
                                   key, capture, device))
    return _join(parts)


def _prefix(model: Any, layers: torch.nn.ModuleList, prefix: tuple[int, ...], frozen: int,
            prefixes: PrefixCache | None, key: str, device: torch.device):
    """One prefix's keys and values in every layer ([1, kv, L, D] each) and its trunk states."""
    n_layers, length = len(layers), len(prefix)
    positions = torch.arange(length, device=device)[None]
    kept = prefixes.get(prefix) if prefixes is not None and frozen else None
    cache = DynamicCache()
    if kept is None:
        trunk: list[torch.Tensor] = []
        with record_outputs(layers[frozen - 1], trunk) if frozen else contextlib.nullcontext():
            model(input_ids=torch.tensor([prefix], device=device), position_ids=positions, use_cache=True,
                  logits_to_keep=1, **{key: cache})
        kept = _Kept([cache.layers[i].keys for i in range(frozen)], [cache.layers[i].values for i in range(frozen)],
                     trunk[0][0] if trunk else None)
        if prefixes is not None and frozen:
            prefixes.put(prefix, kept)
        return [(layer.keys, layer.values) for layer in cache.layers], kept.trunk
    if frozen < n_layers:  # the layers that may have changed: from the kept trunk states
        with top_layers_only(model, frozen):
            model(inputs_embeds=kept.trunk[None], position_ids=positions, use_cache=True, logits_to_keep=1,
                  **{key: cache})
    kv = [(kept.keys[i], kept.values[i]) if i < frozen else (cache.layers[i].keys, cache.layers[i].values)
          for i in range(n_layers)]
    return kv, kept.trunk


def _suffixes(model: Any, rows: list[int], prompts: list[list[int]], skip: int, kv: Any, trunk: Any, pad_id: int,
              key: str, capture: torch.nn.Module | None, device: torch.device) -> _Part:
    """Prefill the prompts of `rows` after their shared `skip` tokens, on top of the prefix's cache."""
    tails = [prompts[i][skip:] for i in rows]
    width = max(map(len, tails))
    own = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in tails], device=device)
    ids = torch.tensor([[pad_id] * (width - len(t)) + t for t in tails], device=device)
    mask = torch.cat([own.new_ones(len(rows), skip), own], 1)
    positions = skip + (own.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    if kv is not None:
        for i, (k, v) in enumerate(kv):
            cache.update(k.expand(len(rows), -1, -1, -1), v.expand(len(rows), -1, -1, -1), i)
    seen: list[torch.Tensor] = []
    with record_outputs(capture, seen) if capture is not None else contextlib.nullcontext():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                       **{key: cache}).logits[:, -1]
    states = {}
    if seen:
        for slot, (i, t) in enumerate(zip(rows, tails)):
            own_states = seen[0][slot, width - len(t):]
            states[i] = own_states if trunk is None or not skip else torch.cat([trunk, own_states])
    return _Part(rows, [(layer.keys, layer.values) for layer in cache.layers], logits, mask, positions[:, -1:], states)


def _join(parts: list[_Part]) -> Prefilled:
    """One cache for all rows: each part's keys and values left-padded to the widest."""
    width = max(part.mask.shape[1] for part in parts)
    pads = [(0, 0, width - part.mask.shape[1], 0) for part in parts]
    layers = []
    for li in range(len(parts[0].layers)):
        layers.append(tuple(torch.cat([torch.nn.functional.pad(part.layers[li][kv], pad) for part, pad in zip(parts, pads)])
                            for kv in (0, 1)))
    return Prefilled(layers, [i for part in parts for i in part.rows], torch.cat([part.logits for part in parts]),
                     torch.cat([torch.nn.functional.pad(part.mask, (pad[2], 0)) for part, pad in zip(parts, pads)]),
                     torch.cat([part.positions for part in parts]), {i: st for part in parts for i, st in part.states.items()})
