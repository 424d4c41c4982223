"""REINFORCE++ / GRPO / RLOO maths on hand-computed tiny examples."""

import math

import pytest
import torch

from selfredteam.errors import ConfigError
from selfredteam.rl.advantages import (
    compute_advantages,
    grpo,
    kl_penalty,
    policy_loss,
    reinforce_pp,
    rloo,
)
from selfredteam.rl.logprobs import pack, selective_log_softmax

MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # seq A has 2 tokens, seq B 1 token


def test_kl_estimators():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert torch.allclose(kl_penalty(lp, ref, "k1"), torch.tensor([0.5, -1.0]))
    # k3 = exp(ref - lp) - (ref - lp) - 1
    exp = torch.tensor([math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1])
    assert torch.allclose(kl_penalty(lp, ref, "k3"), exp)
    assert (kl_penalty(lp, ref, "k3") >= 0).all()
    with pytest.raises(ConfigError):
        kl_penalty(lp, ref, "k2")


def test_reinforce_pp_no_kl_global_whitening():
    adv = reinforce_pp(torch.tensor([1.0, -1.0]), torch.zeros(2, 2), MASK.clone(), kl_coef=0.0)
    # returns over real tokens: [1, 1, -1]; mean 1/3, std sqrt(8/9)
    std = math.sqrt(8 / 9)
    expected = torch.tensor([[(2 / 3) / std, (2 / 3) / std], [(-4 / 3) / std, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-5)


def test_reinforce_pp_kl_shaped_returns():
    kl = torch.tensor([[0.5, 0.2], [0.1, 0.0]])
    adv = reinforce_pp(torch.tensor([1.0, -1.0]), kl, MASK.clone(), kl_coef=0.1)
    # token rewards: A = [-0.05, -0.02 + 1], B = [-0.01 - 1]; reward-to-go: A = [0.93, 0.98], B = [-1.01]
    returns = [0.93, 0.98, -1.01]
    mean = sum(returns) / 3
    std = math.sqrt(sum((r - mean) ** 2 for r in returns) / 3)
    expected = torch.tensor([[(0.93 - mean) / std, (0.98 - mean) / std], [(-1.01 - mean) / std, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-5)


def test_reinforce_pp_normalises_over_batch_not_per_prompt():
    rewards = torch.tensor([2.0, 2.0, -1.0, 0.0])
    mask = torch.ones(4, 3)
    adv = reinforce_pp(rewards, torch.zeros(4, 3), mask, 0.0)
    assert abs(float(adv.mean())) < 1e-6 and abs(float(adv.std(unbiased=False)) - 1) < 1e-4
    assert adv[0, 0] == adv[1, 0] > 0 > adv[2, 0]


def test_grpo_and_rloo():
    r = torch.tensor([1.0, 3.0, 0.0, 0.0])
    g = torch.tensor([0, 0, 1, 1])
    m = torch.ones(4, 2)
    a = grpo(r, None, m, 0.0, group_ids=g)
    assert torch.allclose(a[:, 0], torch.tensor([-1.0, 1.0, 0.0, 0.0]), atol=1e-4)  # (r - 2) / 1
    b = rloo(r, None, m, 0.0, group_ids=g)
    assert torch.allclose(b[:, 1], torch.tensor([-2.0, 2.0, 0.0, 0.0]))
    with pytest.raises(ConfigError, match="samples_per_prompt"):
        compute_advantages("grpo", r, torch.zeros(4, 2), m, 0.0)
    with pytest.raises(ConfigError, match="reinforce_pp"):
        compute_advantages("ppo2", r, torch.zeros(4, 2), m, 0.0)


def test_clipped_surrogate():
    old = torch.zeros(1, 2)
    lp = torch.log(torch.tensor([[1.5, 1.5]]))  # ratio 1.5
    adv = torch.tensor([[1.0, -1.0]])
    loss, info = policy_loss(lp, old, adv, torch.ones(1, 2), clip_eps=0.2)
    # token 1: -min(1.5, 1.2) = -1.2 ; token 2: -min(-1.5, -1.2) = 1.5 ; mean = 0.15
    assert loss.item() == pytest.approx(0.15)
    assert info["clip_frac"] == 1.0
    # the normaliser makes micro-batch sums add up to the full-batch mean
    loss2, _ = policy_loss(lp, old, adv, torch.ones(1, 2), 0.2, normalizer=4.0)
    assert loss2.item() == pytest.approx(0.3 / 4)
    # the largest |ratio - 1| on real tokens (padding ignored): how far off-policy the samples are
    far = torch.log(torch.tensor([[1.1, 3.0]]))
    assert policy_loss(far, old, adv, torch.tensor([[1.0, 0.0]]), 0.2)[1]["ratio_dev_max"] == pytest.approx(0.1)


def test_unclipped_gradient_is_reinforce():
    lp = torch.zeros(1, 1, requires_grad=True)
    loss, _ = policy_loss(lp, lp.detach(), torch.tensor([[2.0]]), torch.ones(1, 1), 0.2)
    loss.backward()
    assert lp.grad.item() == pytest.approx(-2.0)


def test_selective_log_softmax_matches_full():
    torch.manual_seed(0)
    logits = torch.randn(5, 3, 11)
    idx = torch.randint(0, 11, (5, 3))
    full = torch.log_softmax(logits, -1).gather(-1, idx[..., None]).squeeze(-1)
    assert torch.allclose(selective_log_softmax(logits, idx, chunk_rows=2), full, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_head_matches_log_softmax_with_grads(dtype):
    """HeadLogProbs: the token log-probs, entropies and the gradients to the hidden states and to
    the head's weight equal autograd through log_softmax over the full logits (in chunks that do
    not divide the rows); without grad it keeps nothing."""
    from selfredteam.rl.logprobs import head_logprobs

    torch.manual_seed(0)
    h = torch.randn(13, 8, dtype=dtype, requires_grad=True)
    w = (torch.randn(300, 8) / 2).to(dtype).requires_grad_(True)
    tokens = torch.randint(0, 300, (13,))
    g = torch.randn(13)
    logp, ent = head_logprobs(h, w, tokens, chunk=5)
    assert logp.dtype == ent.dtype == torch.float32 and not ent.requires_grad
    (logp * g).sum().backward()
    h2, w2 = h.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    full = torch.log_softmax((h2 @ w2.t()).float(), -1)
    want = full.gather(-1, tokens[:, None]).squeeze(-1)
    (want * g).sum().backward()
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    torch.testing.assert_close(logp, want.detach(), **tol)
    torch.testing.assert_close(ent, -(full.exp() * full).sum(-1).detach(), **tol)
    torch.testing.assert_close(h.grad, h2.grad, **tol)
    torch.testing.assert_close(w.grad, w2.grad, **tol)
    with torch.no_grad():
        again, _ = head_logprobs(h, w, tokens, chunk=4)
    torch.testing.assert_close(again, logp.detach(), atol=1e-6, rtol=0)


def test_pack_layout():
    b = pack([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], pad_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7, 1, 2, 0], [0, 0, 8, 3, 4, 9]]
    assert b.response_ids.tolist() == [[1, 2, 0], [3, 4, 9]]
    assert b.response_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 4], [0, 0, 0, 1, 2, 3]]


def test_group_baseline_compares_the_defender_with_its_own_answers():
    """Issue 19's batch: one seed, two attacker turns and four defender answers to the same prompt.
    Grouped by seed alone, the benign refusal (+1) got advantage 0.00 against a baseline that mixed
    in attacker rewards; against the defender's own answers it is negative."""
    r = torch.tensor([-0.5, 1.0, -1.5, 3.0, 1.0, 3.0])
    roles = ["attacker", "defender", "attacker", "defender", "defender", "defender"]
    mixed = grpo(r, None, torch.ones(6, 1), 0.0, group_ids=torch.zeros(6, dtype=torch.long))
    assert abs(float(mixed[1, 0])) < 1e-6  # the bug: the refusal looked neutral
    groups = torch.tensor([0 if x == "attacker" else 1 for x in roles])
    norm = torch.tensor([0 if x == "attacker" else 1 for x in roles])
    for fn in (grpo, rloo):
        adv = fn(r, None, torch.ones(6, 1), 0.0, group_ids=groups, norm_ids=norm)[:, 0]
        assert adv[1] < 0 and adv[3] > 0
        assert adv[0] > 0 > adv[2]  # attackers are compared with attackers only
    assert float(rloo(r, None, torch.ones(6, 1), 0.0, group_ids=groups, norm_ids=norm)[1, 0]) == pytest.approx(1 - 7 / 3)


def test_singletons_are_pooled_per_role():
    from selfredteam.rl.advantages import baseline_groups

    g = torch.tensor([4, 6, 1, 1, 3, 3])  # two attacker singletons, two defender groups of two
    norm = torch.tensor([0, 0, 1, 1, 2, 2])
    assert baseline_groups(g, norm, "grpo").tolist() == [-1, -1, 1, 1, 3, 3]
    r = torch.tensor([2.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    adv = grpo(r, None, torch.ones(6, 1), 0.0, group_ids=g, norm_ids=norm)[:, 0]
    assert adv.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0, -1.0, 1.0], abs=1e-4)


def test_reinforce_pp_whitens_per_role_when_asked():
    """Pooled, every defender turn (rewards around +1) gets a positive advantage next to attacker
    turns (around -0.7); per role, the worse defender turn is negative."""
    r = torch.tensor([-0.5, -1.0, 1.0, 2.0])
    norm = torch.tensor([0, 0, 1, 1])
    pooled = reinforce_pp(r, torch.zeros(4, 1), torch.ones(4, 1), 0.0)[:, 0]
    assert pooled[2] > 0 and pooled[3] > 0
    per_role = reinforce_pp(r, torch.zeros(4, 1), torch.ones(4, 1), 0.0, norm_ids=norm)[:, 0]
    assert per_role.tolist() == pytest.approx([1.0, -1.0, -1.0, 1.0], abs=1e-4)
