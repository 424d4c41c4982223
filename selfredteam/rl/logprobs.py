"""Per-token log-probs of sampled responses, computed only where they are needed.

A full-vocabulary log_softmax over all positions is the classic memory and time sink (152k
vocab x 8 x 200 tokens took 13 s forward / 33 s per train step and 11.6 GiB on our CPU). We
(1) lay the batch out as [left-padded prompt | right-padded response] so every response sits
in the same columns and run the LM head on the real tokens of those columns only (never on
prompt positions or padding), and (2) take log p(token) as
`gather(logits, token) - logsumexp(logits)` in row chunks, in float32, without materialising a
[B, T, V] log-softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from selfredteam.policy.cpu_fastpath import frozen_linear
from selfredteam.policy.layout import decoder_and_head


@dataclass
class PackedBatch:
    input_ids: torch.Tensor
    """[B, P + R]: left-padded prompts then right-padded responses."""
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_ids: torch.Tensor
    """[B, R]"""
    response_mask: torch.Tensor
    """[B, R] float, 1 on real response tokens."""


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> PackedBatch:
    P = max(len(p) for p in prompts)
    R = max(max(len(r) for r in responses), 1)
    ids, attn, resp, rmask = [], [], [], []
    for p, r in zip(prompts, responses):
        left, right = P - len(p), R - len(r)
        ids.append([pad_id] * left + p + r + [pad_id] * right)
        attn.append([0] * left + [1] * (len(p) + len(r)) + [0] * right)
        resp.append(r + [pad_id] * right)
        rmask.append([1.0] * len(r) + [0.0] * right)
    attention_mask = torch.tensor(attn)
    # Positions count real tokens only, as during generation with left padding.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return PackedBatch(torch.tensor(ids), attention_mask, position_ids, torch.tensor(resp), torch.tensor(rmask))


def scatter_rows(batch: PackedBatch, rows: list[torch.Tensor]) -> torch.Tensor:
    """[B, T, H] from per-sample [n_real, H] states, placed on the batch's real (unmasked) tokens;
    padding gets zeros (it is masked out of attention anyway)."""
    mask = batch.attention_mask.bool()
    out = rows[0].new_zeros(*mask.shape, rows[0].shape[-1])
    for b, r in enumerate(rows):
        out[b, mask[b]] = r
    return out


def gather_rows(batch: PackedBatch, states: torch.Tensor) -> list[torch.Tensor]:
    """The inverse of `scatter_rows`: per-sample [n_real, H] states from [B, T, H] ones, the
    padding dropped (what the learner keeps of a captured frozen trunk)."""
    mask = batch.attention_mask.bool()
    return [states[b][mask[b]] for b in range(mask.shape[0])]


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
    inputs = dict(attention_mask=batch.attention_mask.to(device), position_ids=batch.position_ids.to(device),
                  use_cache=False)
    parts = decoder_and_head(model)
    if parts is None:
        # Column j of the kept logits predicts the token after it: the first R columns predict
        # the R response tokens.
        logits = model(**tokens, **inputs, logits_to_keep=R + 1).logits[:, :R, :]
        if temperature != 1.0:
            logits = logits / temperature
        logp = selective_log_softmax(logits, ids, chunk_rows) * mask
        ent = entropy_from_logits(logits, chunk_rows) * mask if with_entropy else None
        return ResponseLogProbs(logp, ent, _at_columns(set_at, lambda r, c: logits[r.to(device), c.to(device)]))
    decoder, head = parts
    hidden = decoder(**tokens, **inputs).last_hidden_state[:, -(R + 1) : -1]  # predicts the responses
    at = _at_columns(set_at, lambda r, c: head(hidden[r.to(device), c.to(device)] / temperature))
    keep = mask.bool()
    h = hidden[keep]  # [N real response tokens, H]
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
