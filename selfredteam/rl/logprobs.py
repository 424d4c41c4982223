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

import torch


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


PLAIN_LAYOUT_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}
"""Causal LMs of the plain layout: the decoder feeds `inputs_embeds` to its first layer unchanged
(Gemma, for one, rescales them) and the logits are exactly `lm_head(final hidden state)` (no
softcapping, unlike Gemma 2). Only these may be run in pieces: the decoder and the head apart
(here), or the top layers alone from cached states (rl/model.py)."""


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


def response_logprobs(model: torch.nn.Module, batch: PackedBatch, with_entropy: bool = False,
                      chunk_rows: int = 4, temperature: float = 1.0,
                      inputs_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B, R] log-probs of the response tokens (0 on padding), and optionally their entropies.

    The policy is softmax(logits / temperature): the distribution the tokens were sampled from.
    `inputs_embeds` replaces the token ids (the learner passes cached frozen-trunk states).

    For known layouts the LM head runs on the real response tokens only, not on the padding of
    shorter responses (the head over a 152k vocabulary was 30% of a cpu-demo update, much of it
    padding), and the temperature divides the hidden states (exact for a bias-free head) rather
    than the [tokens, vocab] logits."""
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
        return logp, ent
    decoder, head = parts
    hidden = decoder(**tokens, **inputs).last_hidden_state[:, -(R + 1) : -1]  # predicts the responses
    keep = mask.bool()
    h = hidden[keep]  # [N real response tokens, H]
    scale_hidden = temperature != 1.0 and getattr(head, "bias", None) is None
    logits = head(h / temperature if scale_hidden else h)
    if temperature != 1.0 and not scale_hidden:
        logits = logits / temperature
    rows = chunk_rows * R  # as many logits per chunk as the padded path
    logp = mask.new_zeros(mask.shape, dtype=torch.float32)
    logp[keep] = selective_log_softmax(logits, ids[keep], rows)
    ent = None
    if with_entropy:
        ent = mask.new_zeros(mask.shape, dtype=torch.float32)
        ent[keep] = entropy_from_logits(logits, rows)
    return logp, ent
