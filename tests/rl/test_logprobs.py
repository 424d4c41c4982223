"""The learner's batch layouts: one padded row per sample, or a micro-batch packed into one
sequence with its shared prompt prefix once (`pack(packed=True)`). Both must give the same
log-probs, entropies, decision masses and gradients, from token ids or from kept trunk states."""

import copy

import pytest
import torch

from selfredteam.config import TrainConfig
from selfredteam.rl.learner import Learner, Sample
from selfredteam.rl.logprobs import (
    Segments,
    gather_rows,
    pack,
    packs_rows,
    response_logprobs,
    scatter_rows,
)
from tests.rl.test_learner import lora_policy, lora_state
from tests.rl.test_loop import LOGPROB_ATOL
from tests.rl.tiny import tiny_model

# Prompts that share a 3-token prefix (a role's template), one that is the prefix plus one token,
# and responses of different lengths: padding and a shared prefix both occur.
PROMPTS = [[5, 6, 7, 8, 9], [5, 6, 7, 10], [5, 6, 7, 11, 12, 13], [5, 6, 7]]
RESPONSES = [[20, 21, 1], [22, 23, 24, 25], [26], [27, 28]]


def test_packed_layout():
    b = pack([[5, 6, 7, 8], [5, 6, 9]], [[1, 2], [3]], pad_id=0, packed=True)
    assert b.packed
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 1, 2, 9, 3]]  # the prefix 5 6 once
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 2, 3]]  # each sample at its own positions
    assert [r.tolist() for r in b.rows] == [[0, 1, 2, 3, 4, 5], [0, 1, 6, 7]]
    assert b.predict_at.tolist() == [[3, 4], [6, 0]]  # 8 predicts 1, 1 predicts 2; 9 predicts 3
    assert b.response_ids.tolist() == [[1, 2], [3, 0]]
    assert b.segments == Segments(prefix=2, bounds=((2, 6), (6, 8)))
    assert b.attention_mask is None


def test_padded_layout_indices():
    b = pack([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], pad_id=0)
    assert not b.packed
    assert [r.tolist() for r in b.rows] == [[0, 1, 2, 3, 4], [8, 9, 10, 11]]
    assert b.predict_at.tolist() == [[2, 3, 0], [8, 9, 10]]


def _logprobs_and_grads(policy, packed: bool, trunk=None, set_at=None):
    batch = pack(PROMPTS, RESPONSES, pad_id=0, packed=packed)
    policy.model.zero_grad()
    embeds = scatter_rows(batch, trunk) if trunk is not None else None
    if trunk is not None:
        with policy.top_layers_only():
            out = response_logprobs(policy.model, batch, with_entropy=True, inputs_embeds=embeds, set_at=set_at)
    else:
        out = response_logprobs(policy.model, batch, with_entropy=True, set_at=set_at)
    weights = torch.arange(out.logp.numel(), dtype=torch.float32).view(out.logp.shape) % 3 - 1
    (out.logp * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("frozen_layers", [0, 1])
def test_packed_and_padded_layouts_give_the_same_logprobs_and_gradients(frozen_layers):
    """From token ids (the whole stack), and from trunk states kept from a padded pass and placed
    into the packed sequence (the top layer only)."""
    policy = lora_policy(0, frozen_layers=frozen_layers)
    trunk = None
    if frozen_layers:
        captured = []
        with torch.no_grad(), policy.capture_trunk(captured):
            response_logprobs(policy.model, pack(PROMPTS, RESPONSES, pad_id=0))
        trunk = gather_rows(pack(PROMPTS, RESPONSES, pad_id=0), captured[0])
        packed_trunk = []
        with torch.no_grad(), policy.capture_trunk(packed_trunk):
            response_logprobs(policy.model, pack(PROMPTS, RESPONSES, pad_id=0, packed=True))
        for a, b in zip(trunk, gather_rows(pack(PROMPTS, RESPONSES, pad_id=0, packed=True), packed_trunk[0])):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    set_at = (torch.tensor([1, -1, 0, 1]), torch.tensor([20, 22, 30]))
    padded, g_padded = _logprobs_and_grads(policy, False, trunk, set_at)
    packed, g_packed = _logprobs_and_grads(policy, True, trunk, set_at)
    torch.testing.assert_close(packed.logp, padded.logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed.entropy, padded.entropy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed.set_logp, padded.set_logp, atol=1e-5, rtol=1e-5)
    assert (packed.logp[1, :4] != 0).all() and (packed.logp[2, 1:] == 0).all()
    assert g_padded.keys() == g_packed.keys() and g_padded
    for name in g_padded:
        torch.testing.assert_close(g_packed[name], g_padded[name], atol=1e-5, rtol=1e-4)


def test_packed_layout_in_bf16_moves_logprobs_no_more_than_bf16_itself():
    """bf16 is what `model.dtype=auto` picks on an AVX-512-BF16 CPU, and the learner packs there
    too. Per-sample attention rounds in other places than the padded batch's one masked call, so
    the two layouts agree only to bf16's own precision: the packed log-probs must lie within the
    sampler-vs-learner bf16 tolerance of the padded ones, and no further from the fp32 values than
    the bf16 padded ones lie from them (plus that tolerance)."""
    policy = lora_policy(0)
    exact, _ = _logprobs_and_grads(policy, False)
    for name, p in policy.model.named_parameters():  # as peft keeps them on a bf16 base: adapters fp32
        if "lora_" not in name:
            p.data = p.data.bfloat16()
    padded, g_padded = _logprobs_and_grads(policy, False)
    packed, g_packed = _logprobs_and_grads(policy, True)
    atol = LOGPROB_ATOL["bfloat16"]
    torch.testing.assert_close(packed.logp.float(), padded.logp.float(), atol=atol, rtol=0)
    torch.testing.assert_close(packed.entropy.float(), padded.entropy.float(), atol=atol, rtol=0)
    dtype_err = (padded.logp.float() - exact.logp).abs().max()
    assert (packed.logp.float() - exact.logp).abs().max() <= dtype_err + atol
    for name in g_padded:  # the same direction: gradients agree to bf16's relative step, a few times
        a, b = g_padded[name].float(), g_packed[name].float()
        assert (a - b).norm() <= 8 * 2**-8 * a.norm(), name


def _update(packed: bool, frozen_layers: int):
    policy = lora_policy(0, frozen_layers=frozen_layers)
    learner = Learner(policy, TrainConfig(lr=1e-2, train_batch_size=4, micro_batch_size=4, kl_coef=0.05,
                                          epochs_per_batch=2))
    assert learner.packed  # a tiny Qwen2 on a CPU with sdpa attention
    learner.packed = packed
    rows = [Sample("defender", p, r, reward=float(i) - 1.5) for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES))]
    sft = [Sample("defender", p, r, 0.0) for p, r in zip(PROMPTS[:2], RESPONSES[2:])]
    stats = learner.update(rows, sft=copy.deepcopy(sft), sft_coef=0.5)
    return lora_state(policy), stats


@pytest.mark.parametrize("frozen_layers", [0, 1])
def test_a_learner_update_is_the_same_with_packed_micro_batches(frozen_layers):
    (a, stats_a), (b, stats_b) = _update(False, frozen_layers), _update(True, frozen_layers)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5)
    for key in ("loss/policy", "kl/mean", "loss/sft_nll", "loss/entropy"):
        assert abs(stats_a[key] - stats_b[key]) < 1e-5, key


def test_only_a_model_run_in_pieces_with_sdpa_on_a_cpu_packs():
    assert packs_rows(tiny_model())
    flash = tiny_model()
    flash.config._attn_implementation = "flash_attention_2"  # a GPU kernel: the padded layout stays
    assert not packs_rows(flash)
    checkpointed = tiny_model()
    checkpointed.gradient_checkpointing_enable()  # its recompute runs outside the packed attention
    assert not packs_rows(checkpointed)


def test_a_packed_batch_needs_a_model_run_in_pieces(monkeypatch):
    monkeypatch.setattr("selfredteam.rl.logprobs.decoder_and_head", lambda model: None)
    with pytest.raises(ValueError, match="packed"):
        response_logprobs(tiny_model(), pack(PROMPTS, RESPONSES, pad_id=0, packed=True))
