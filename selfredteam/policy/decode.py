"""The sampling loop of the transformers backend: prefill the prompts, then one forward per token.

Our own loop rather than `model.generate`, because on a 2-core CPU the step around the model is a
large part of the step (profiled on the AVX2 kind, cpu-demo's first pass: 8 rows, 80 tokens):
- **finished rows leave the batch**: their cache rows are dropped, so the LM head (a [rows, 152k]
  product) and the sampler run on the rows still writing; `generate` carries them to the end;
- **shared prompt prefixes run once, and prompts are prefilled in groups of similar length**
  (policy/prefill.py): prefill is compute-bound, and the chat template and a role's instructions
  are the same in every row;
- **the KV cache grows in place** (a buffer with room to spare) instead of a `torch.cat` of the
  whole cache per layer per token;
- **sampling and the sampled token's log-prob in one pass** over the logits (`sample_tokens`),
  without keeping every step's [rows, vocab] logits until the end.
The sampled distribution is the same: softmax(logits / T), drawn by inverse CDF.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from selfredteam.policy.layout import cache_kwarg, record_outputs
from selfredteam.policy.prefill import PrefixCache, prefill

BLOCK = 1024
"""Vocabulary entries per block of the two-level inverse CDF (`sample_tokens`)."""


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from softmax(logits / T) (top-p optional; greedy at T=0), and its log-prob
    under softmax(logits / T) without the top-p cut (the policy the learner optimises).

    Inverse CDF in two levels: a prefix sum over 1024-entry block sums picks the block, one within
    the block picks the token. A full-vocabulary cumulative sum is a sequential scan over 152k
    entries per row; this reads the probabilities once and scans ~1.2k. One uniform per row."""
    z = logits.float()
    if temperature <= 0:
        token = z.argmax(-1)
        return token, z.gather(-1, token[:, None]).squeeze(-1) - torch.logsumexp(z, -1)
    z = z / temperature
    m = z.amax(-1, keepdim=True)
    p = torch.exp(z - m)  # unnormalised probabilities, max 1
    total = p.sum(-1, keepdim=True)
    logp_all = m + total.log()  # log-sum-exp of z
    if top_p < 1.0:
        # Keep the smallest set of most likely tokens whose mass reaches top_p.
        sorted_p, order = p.sort(dim=-1, descending=True)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p * total
        p = p.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    token = _inverse_cdf(p, torch.rand(p.shape[0], 1, device=p.device))
    return token, z.gather(-1, token[:, None]).squeeze(-1) - logp_all.squeeze(-1)


def _inverse_cdf(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The index where the running sum of each row of `p` (>= 0, not normalised) first passes
    u * its total; never an entry of probability 0."""
    rows, vocab = p.shape
    blocks = -(-vocab // BLOCK)
    padded = torch.nn.functional.pad(p, (0, blocks * BLOCK - vocab)).view(rows, blocks, BLOCK)
    sums = padded.sum(-1)
    running = sums.cumsum(-1)
    target = u * running[:, -1:]
    k = torch.searchsorted(running, target, right=True).clamp_(max=blocks - 1)
    # Rounding can leave the target just past a row's last non-empty block: step back to it.
    k = torch.minimum(k, (sums > 0).cumsum(-1).argmax(-1, keepdim=True))
    inner = padded[torch.arange(rows, device=p.device), k.squeeze(-1)]
    # The mass before block k, recomputed, can round past the target: never below its first entry.
    rest = (target - (running.gather(-1, k) - sums.gather(-1, k))).clamp_(min=0)
    j = torch.searchsorted(inner.cumsum(-1), rest, right=True).clamp_(max=BLOCK - 1)
    j = torch.minimum(j, (inner > 0).cumsum(-1).argmax(-1, keepdim=True))
    return (k * BLOCK + j).squeeze(-1)


class _PreallocatedLayer(DynamicLayer):
    """A cache layer whose keys and values are views of buffers sized for the whole generation:
    appending a token writes in place (DynamicLayer concatenates the whole cache every step)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        super().__init__()
        self.device, self.is_initialized = keys.device, True
        self._k = keys.new_empty(*keys.shape[:2], capacity, keys.shape[-1])
        self._v = values.new_empty(*values.shape[:2], capacity, values.shape[-1])
        self._n = 0
        self.update(keys, values)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        n, m = self._n, key_states.shape[-2]
        self._k[:, :, n : n + m] = key_states  # past the capacity this raises: never a silent overwrite
        self._v[:, :, n : n + m] = value_states
        self._n = n + m
        self.keys, self.values = self._k[:, :, : self._n], self._v[:, :, : self._n]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._k, self._v = self._k[indices], self._v[indices]
        self.keys, self.values = self._k[:, :, : self._n], self._v[:, :, : self._n]


@dataclass
class Row:
    """One prompt's sampling state."""

    prompt: list[int]
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: str | None = None
    states: list[torch.Tensor] = field(default_factory=list)
    """Captured hidden states: the prompt's, then one per token fed back."""


@torch.inference_mode()
def decode(model: Any, prompts: list[list[int]], *, max_new_tokens: int, temperature: float, top_p: float,
           pad_id: int, eos_ids: set[int], stopped: Callable[[list[int]], bool] | None = None,
           capture: torch.nn.Module | None = None, prefixes: PrefixCache | None = None) -> list[Row]:
    """Sample up to `max_new_tokens` per prompt. A row ends at an EOS id (kept), when `stopped(ids)`
    says so, or at the budget. `capture`: a decoder layer whose output states are kept per row.
    `prefixes`: shared prompt prefixes kept across calls (policy/prefill.py)."""
    rows = [Row(list(p)) for p in prompts]
    device = next(model.parameters()).device
    key = cache_kwarg(model)
    first = prefill(model, prompts, pad_id=pad_id, capture=capture, prefixes=prefixes)
    cache = DynamicCache()
    cache.layers = [_PreallocatedLayer(k, v, k.shape[-2] + max_new_tokens) for k, v in first.layers]
    active, logits, mask, positions = first.order, first.logits, first.mask, first.positions
    for i, states in first.states.items():
        rows[i].states.append(states)
    seen: list[torch.Tensor] = []
    with record_outputs(capture, seen) if capture is not None else contextlib.nullcontext():
        for step in range(max_new_tokens):
            tokens, logp = sample_tokens(logits, temperature, top_p)
            keep = []
            for slot, (r, t, lp) in enumerate(zip(active, tokens.tolist(), logp.tolist())):
                row = rows[r]
                row.ids.append(t)
                row.logprobs.append(lp)
                if t in eos_ids or (stopped is not None and stopped(row.ids)):
                    row.finish = "stop"
                elif step + 1 == max_new_tokens:
                    row.finish = "length"
                else:
                    keep.append(slot)
            if not keep:
                break
            if len(keep) < len(active):
                idx = torch.tensor(keep, device=device)
                for layer in cache.layers:
                    layer.batch_select_indices(idx)
                tokens, mask, positions = tokens[idx], mask[idx], positions[idx]
                active = [active[s] for s in keep]
            mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
            positions = positions + 1
            seen.clear()
            logits = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions, use_cache=True,
                           **{key: cache}).logits[:, -1]
            for slot, r in enumerate(active):
                if seen:
                    rows[r].states.append(seen[0][slot])
    return rows
