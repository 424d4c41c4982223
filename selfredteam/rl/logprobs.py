"""Per-token log-probs of sampled responses, computed only where they are needed.

A full-vocabulary log_softmax over all positions is the classic memory and time sink (152k
vocab x 8 x 200 tokens took 13 s forward / 33 s per train step and 11.6 GiB on our CPU). We
(1) lay the batch out as [left-padded prompt | right-padded response] so every response sits
in the same columns and run the LM head on the real tokens of those columns only (never on
prompt positions or padding), and (2) take log p(token) as
`gather(logits, token) - logsumexp(logits)` in row chunks, in float32, without materialising a
[B, T, V] log-softmax.

On a CPU the decoder itself is compute-bound, and a padded token costs what a real one does. So
there (`packs_rows`) a micro-batch is one sequence instead: the prompts' common prefix once, then
each sample's own prompt tail and response, at the positions it has alone. In the cpu-demo's
micro-batches padding was 11% of the tokens computed and the role's repeated prompt prefix another
11% (BENCHMARKS.md). Attention then runs per sample, over the prefix's keys and its own
(`segment_attention`): one dense mask over the whole sequence would score every sample's keys and
throw most scores away (2.7x the padded batch's attention time, measured), eating the saving.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from selfredteam.policy.cpu_fastpath import frozen_linear
from selfredteam.policy.layout import decoder_and_head
from selfredteam.policy.prefill import common_prefix


@dataclass
class PackedBatch:
    input_ids: torch.Tensor
    """[B, T]: left-padded prompts then right-padded responses, one row per sample; or (`packed`)
    one row: the prompts' common prefix, then each sample's prompt tail and response."""
    attention_mask: torch.Tensor | None
    """[B, T] 1 on real tokens; None when packed (`segments` says who sees what)."""
    position_ids: torch.Tensor
    response_ids: torch.Tensor
    """[N samples, R]"""
    response_mask: torch.Tensor
    """[N, R] float, 1 on real response tokens."""
    rows: list[torch.Tensor]
    """Per sample, where its real tokens (prompt and response, in order) lie in the flattened
    [B * T] sequence: what `scatter_rows`/`gather_rows` move per-sample states by."""
    predict_at: torch.Tensor
    """[N, R]: the flattened position whose output predicts each response token (0 on padding)."""
    segments: Segments | None = None
    """Packed: where the shared prefix and each sample's own tokens lie in the one sequence."""

    @property
    def packed(self) -> bool:
        return self.segments is not None


@dataclass(frozen=True)
class Segments:
    """A packed sequence's layout: `prefix` shared tokens first, then each sample's own tokens at
    [start, end). A token sees the prefix (causally, if it is in it) and the earlier tokens of
    its own sample."""

    prefix: int
    bounds: tuple[tuple[int, int], ...]


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int, packed: bool = False) -> PackedBatch:
    """The learner's batch of (prompt, response) samples: one padded row each, or with `packed`
    one sequence for all of them (module doc; same log-probs up to float summation order)."""
    R = max(max(len(r) for r in responses), 1)
    resp = torch.tensor([r + [pad_id] * (R - len(r)) for r in responses])
    rmask = torch.tensor([[1.0] * len(r) + [0.0] * (R - len(r)) for r in responses])
    segments = None
    if packed:
        ids, segments, position_ids, rows = _one_sequence(prompts, responses)
        attention_mask = None
    else:
        ids, attention_mask, position_ids, rows = _padded_rows(prompts, responses, R, pad_id)
    predict_at = torch.zeros(len(prompts), R, dtype=torch.long)
    for i, (p, r, row) in enumerate(zip(prompts, responses, rows)):
        predict_at[i, : len(r)] = row[len(p) - 1 : len(p) + len(r) - 1]
    return PackedBatch(ids, attention_mask, position_ids, resp, rmask, rows, predict_at, segments)


def _padded_rows(prompts: list[list[int]], responses: list[list[int]], R: int, pad_id: int):
    """[left-padded prompt | right-padded response] per sample: every response in the same columns."""
    P = max(len(p) for p in prompts)
    ids, attn = [], []
    for p, r in zip(prompts, responses):
        left, right = P - len(p), R - len(r)
        ids.append([pad_id] * left + p + r + [pad_id] * right)
        attn.append([0] * left + [1] * (len(p) + len(r)) + [0] * right)
    attention_mask = torch.tensor(attn)
    # Positions count real tokens only, as during generation with left padding.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    flat = torch.arange(attention_mask.numel()).view(attention_mask.shape)
    rows = [flat[b][attention_mask[b].bool()] for b in range(len(prompts))]
    return torch.tensor(ids), attention_mask, position_ids, rows


def _one_sequence(prompts: list[list[int]], responses: list[list[int]]):
    """The prompts' common prefix once (when there are several samples), then each sample's
    prompt tail and response, each at the positions it has alone."""
    c = common_prefix(prompts) if len(prompts) > 1 else 0
    ids, positions, bounds, rows = list(prompts[0][:c]), list(range(c)), [], []
    for p, r in zip(prompts, responses):
        own = p[c:] + r
        start = len(ids)
        rows.append(torch.cat([torch.arange(c), torch.arange(start, start + len(own))]))
        bounds.append((start, start + len(own)))
        ids += own
        positions += range(c, c + len(own))
    return torch.tensor([ids]), Segments(c, tuple(bounds)), torch.tensor([positions]), rows


SEGMENT_ATTENTION = "selfredteam_segments"
"""The attention implementation a packed batch runs under (`segment_attention`)."""


def _attend_by_segment(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                       sliding_window: int | None = None, segments: Segments | None = None,
                       **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention over a packed sequence ([1, heads, T, D]), one SDPA call for the prefix and one
    per sample (its queries against the prefix's keys and its own); without `segments`, sdpa's."""
    if segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, **kwargs)
    c = segments.prefix
    if sliding_window is not None and max(c + end - start for start, end in segments.bounds) > sliding_window:
        raise ValueError(f"a packed sample is longer than the attention's sliding window ({sliding_window})")
    if key.shape[1] != query.shape[1]:  # grouped-query attention: each key head serves a group of query heads
        key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
        value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
    out = []
    if c:
        out.append(F.scaled_dot_product_attention(query[:, :, :c], key[:, :, :c], value[:, :, :c], is_causal=True,
                                                  dropout_p=dropout, scale=scaling))
    for start, end in segments.bounds:
        k = torch.cat([key[:, :, :c], key[:, :, start:end]], 2)
        v = torch.cat([value[:, :, :c], value[:, :, start:end]], 2)
        # Own token j (at position c + j) sees the prefix and its own tokens up to j.
        sees = torch.arange(c + end - start, device=k.device) <= c + torch.arange(end - start, device=k.device)[:, None]
        out.append(F.scaled_dot_product_attention(query[:, :, start:end], k, v, attn_mask=sees, dropout_p=dropout,
                                                  scale=scaling))
    return torch.cat(out, 2).transpose(1, 2).contiguous(), None


AttentionInterface.register(SEGMENT_ATTENTION, _attend_by_segment)


@contextlib.contextmanager
def segment_attention(decoder: torch.nn.Module) -> Iterator[None]:
    """Run `decoder`'s attention as `_attend_by_segment` (it reads the `segments` keyword the
    decoder passes down to its layers): every layer reads the implementation from the one config.
    No mask is built for it: the model's mask functions do not know its name."""
    config = decoder.config
    before = config._attn_implementation
    config._attn_implementation = SEGMENT_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before


def packs_rows(model: torch.nn.Module) -> bool:
    """Whether the learner should lay a micro-batch out as one sequence (`pack(packed=True)`): a
    plain-layout model run in pieces (the head reads `predict_at`) on a CPU, with sdpa or eager
    attention (what `_attend_by_segment` stands in for) and no gradient checkpointing (its
    recompute would run after `segment_attention` has ended). On a GPU the padded layout stays:
    there a padded token is close to free, and one SDPA call per sample is not."""
    if decoder_and_head(model) is None:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    on_cpu = next(model.parameters()).device.type == "cpu"
    return (on_cpu and getattr(base.config, "_attn_implementation", None) in ("sdpa", "eager")
            and not any(getattr(m, "gradient_checkpointing", False) for m in base.modules()))


def scatter_rows(batch: PackedBatch, rows: list[torch.Tensor]) -> torch.Tensor:
    """[B, T, H] from per-sample [n_real, H] states, placed on the batch's real tokens (`rows`; a
    shared prefix gets each sample's copy of the same states); padding gets zeros (it is masked out
    of attention anyway)."""
    B, T = batch.input_ids.shape
    out = rows[0].new_zeros(B * T, rows[0].shape[-1])
    for where, r in zip(batch.rows, rows):
        out[where] = r
    return out.view(B, T, -1)


def gather_rows(batch: PackedBatch, states: torch.Tensor) -> list[torch.Tensor]:
    """The inverse of `scatter_rows`: per-sample [n_real, H] states from [B, T, H] ones, the
    padding dropped (what the learner keeps of a captured frozen trunk)."""
    flat = states.reshape(-1, states.shape[-1])
    return [flat[where] for where in batch.rows]


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, chunk_rows: int = 4) -> torch.Tensor:
    """log_softmax(logits)[..., index] in float32, `chunk_rows` batch rows at a time."""
    out = []
    for lg, ix in zip(logits.split(chunk_rows), index.split(chunk_rows)):
        lg = lg.float()
        out.append(lg.gather(-1, ix.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(lg, dim=-1))
    return torch.cat(out)


@torch.no_grad()
def entropy_from_logits(logits: torch.Tensor, chunk_rows: int = 4) -> torch.Tensor:
    out = []
    for lg in logits.split(chunk_rows):
        lg = lg.float()
        lse = torch.logsumexp(lg, dim=-1, keepdim=True)
        out.append(lse.squeeze(-1) - (torch.softmax(lg, -1) * lg).sum(-1))
    return torch.cat(out)


def _head_pass(h: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, chunk: int,
               keep_probs: bool) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Token log-probs and entropies under softmax(h W^T), `chunk` rows at a time; with
    `keep_probs`, each chunk's probabilities too (what the backward needs)."""
    logp, ent, probs = [], [], []
    for hc, tc in zip(h.split(chunk), tokens.split(chunk)):
        z = frozen_linear(hc, weight).float()
        z_tok = z.gather(-1, tc[:, None])
        m = z.amax(-1, keepdim=True)
        z.sub_(m)
        p = torch.exp(z)
        total = p.sum(-1, keepdim=True)
        p.div_(total)
        lse = total.log()  # of z - m
        logp.append((z_tok - m - lse).squeeze(-1))
        ent.append(lse.squeeze(-1) - torch.bmm(p[:, None, :], z[:, :, None]).view(-1))  # -sum p log p
        if keep_probs:
            probs.append(p)
    return torch.cat(logp), torch.cat(ent), probs


class HeadLogProbs(torch.autograd.Function):
    """log softmax(h W^T)[token] per row, with grad to `h`, and the entropy of each row's softmax
    (no grad), through the LM head in one pass per chunk of rows.

    The stock path (`head(h)`, then log-sum-exp, a gather, and the entropy apart) reads and
    allocates the [rows, vocab] logits some 25 times between forward and backward, and each fresh
    allocation of 100+ MB also costs its page faults. Here a chunk's logits are computed once and
    turned into probabilities in place, kept for the backward (d logp / dz = onehot - p), and the
    entropy is one more dot product. The product runs in the weight's dtype and the rest in
    float32, as the stock path did."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor,
                chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        logp, ent, probs = _head_pass(h, weight, tokens, chunk, keep_probs=True)
        ctx.save_for_backward(h, weight, tokens)
        ctx.probs, ctx.chunk = probs, chunk
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx: Any, grad_logp: torch.Tensor, grad_ent: Any) -> tuple:
        h, weight, tokens = ctx.saved_tensors
        grad_h, grad_w = [], None
        for p, g, hc, tc in zip(ctx.probs, grad_logp.split(ctx.chunk), h.split(ctx.chunk), tokens.split(ctx.chunk)):
            p.mul_(-g[:, None])  # in place on the kept probabilities: g * (onehot - p) = d/dz
            p.scatter_add_(-1, tc[:, None], g[:, None])
            dz = p.to(weight.dtype)
            if ctx.needs_input_grad[0]:
                grad_h.append(dz @ weight)
            if ctx.needs_input_grad[1]:  # a trained head (full fine-tuning)
                grad_w = dz.t() @ hc if grad_w is None else grad_w.addmm_(dz.t(), hc)
        ctx.probs = None
        return (torch.cat(grad_h).to(h.dtype) if grad_h else None), grad_w, None, None


def head_logprobs(h: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor,
                  chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each row's token, entropy of each row) under softmax(h W^T), in float32;
    differentiable in `h` and `weight` (the entropy is not)."""
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return HeadLogProbs.apply(h, weight, tokens, chunk)
    logp, ent, _ = _head_pass(h, weight, tokens, chunk, keep_probs=False)
    return logp, ent


class ResponseLogProbs(NamedTuple):
    logp: torch.Tensor
    """[B, R] log-probs of the response tokens (0 on padding)."""
    entropy: torch.Tensor | None
    """[B, R] entropies, with `with_entropy`."""
    set_logp: torch.Tensor | None = None
    """[B] log of the probability mass on a token set at one response column per row, with `set_at`
    (0 where a row's column is -1)."""


def set_logprob(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log sum_{t in tokens} softmax(logits)[t] per row, in float32: how likely the next token is
    any of `tokens` (the learner's refusal decision, train.sft.decision_bce)."""
    z = logits.float()
    return torch.logsumexp(z[:, tokens], dim=-1) - torch.logsumexp(z, dim=-1)


def response_logprobs(model: torch.nn.Module, batch: PackedBatch, with_entropy: bool = False,
                      chunk_rows: int = 4, temperature: float = 1.0,
                      inputs_embeds: torch.Tensor | None = None,
                      set_at: tuple[torch.Tensor, torch.Tensor] | None = None) -> ResponseLogProbs:
    """[B, R] log-probs of the response tokens (0 on padding), and optionally their entropies.

    The policy is softmax(logits / temperature): the distribution the tokens were sampled from.
    `inputs_embeds` replaces the token ids (the learner passes cached frozen-trunk states).

    For known layouts the LM head runs on the real response tokens only, not on the padding of
    shorter responses (the head over a 152k vocabulary was 30% of a cpu-demo update, much of it
    padding), and the temperature divides the hidden states (exact for a bias-free head) rather
    than the [tokens, vocab] logits.

    `set_at` = (columns [B], tokens [K]): also the log-probability that the token predicted at
    response column `columns[b]` of row b (-1: none) is any of `tokens`, from the same forward
    (a decision read where the answer starts, e.g. whether it opens as a refusal)."""
    R = batch.response_ids.shape[1]
    device = next(model.parameters()).device
    tokens = {"inputs_embeds": inputs_embeds.to(device)} if inputs_embeds is not None else \
        {"input_ids": batch.input_ids.to(device)}
    ids = batch.response_ids.to(device)
    mask = batch.response_mask.to(device)
    inputs = dict(position_ids=batch.position_ids.to(device), use_cache=False)
    if batch.packed:
        inputs["segments"] = batch.segments
    else:
        inputs["attention_mask"] = batch.attention_mask.to(device)
    parts = decoder_and_head(model)
    if parts is None:
        if batch.packed:
            raise ValueError("a batch packed into one sequence needs a model run in pieces (see packs_rows)")
        # Column j of the kept logits predicts the token after it: the first R columns predict
        # the R response tokens.
        logits = model(**tokens, **inputs, logits_to_keep=R + 1).logits[:, :R, :]
        if temperature != 1.0:
            logits = logits / temperature
        logp = selective_log_softmax(logits, ids, chunk_rows) * mask
        ent = entropy_from_logits(logits, chunk_rows) * mask if with_entropy else None
        return ResponseLogProbs(logp, ent, _at_columns(set_at, lambda r, c: logits[r.to(device), c.to(device)]))
    decoder, head = parts
    with segment_attention(decoder) if batch.packed else contextlib.nullcontext():
        hidden = decoder(**tokens, **inputs).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])
    at_pos = batch.predict_at.to(device)  # the positions that predict the responses
    at = _at_columns(set_at, lambda r, c: head(hidden[at_pos[r.to(device), c.to(device)]] / temperature))
    keep = mask.bool()
    h = hidden[at_pos[keep]]  # [N real response tokens, H]
    logp = mask.new_zeros(mask.shape, dtype=torch.float32)
    ent = mask.new_zeros(mask.shape, dtype=torch.float32) if with_entropy else None
    weight = getattr(head, "weight", None)
    # The fused head reads the weight directly: only a bias-free head whose weight is here whole
    # (under ZeRO-3 it is an empty placeholder that the module's own forward gathers).
    if getattr(head, "bias", None) is None and weight is not None and weight.dim() == 2 and weight.shape[1] == h.shape[-1]:
        # The temperature divides the hidden states: exact for a bias-free head, and H wide, not V.
        lp, e = head_logprobs(h / temperature if temperature != 1.0 else h, weight, ids[keep])
        logp[keep] = lp
        if ent is not None:
            ent[keep] = e
        return ResponseLogProbs(logp, ent, at)
    logits = head(h)
    if temperature != 1.0:
        logits = logits / temperature
    rows = chunk_rows * R  # as many logits per chunk as the padded path
    logp[keep] = selective_log_softmax(logits, ids[keep], rows)
    if ent is not None:
        ent[keep] = entropy_from_logits(logits, rows)
    return ResponseLogProbs(logp, ent, at)


def _at_columns(set_at: tuple[torch.Tensor, torch.Tensor] | None, logits_at) -> torch.Tensor | None:
    """`response_logprobs`'s `set_at` output: [B] set log-probs, from `logits_at(rows, columns)`
    (the logits at those positions) for the rows with a column; 0 for the others."""
    if set_at is None:
        return None
    cols, tokens = set_at
    rows = (cols >= 0).nonzero().squeeze(-1)
    if not rows.numel():
        return torch.zeros(cols.shape[0])
    lg = logits_at(rows, cols[rows])
    out = torch.zeros(cols.shape[0], device=lg.device)
    return out.index_put((rows.to(lg.device),), set_logprob(lg, tokens.to(lg.device)))
