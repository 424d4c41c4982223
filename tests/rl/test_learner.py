"""Learner correctness on a tiny real transformer: log-prob alignment, LoRA reference, accumulation."""

import copy
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from selfredteam.config import TrainConfig
from selfredteam.rl.learner import Learner, Sample, nonfinite_grads
from selfredteam.rl.logprobs import pack, response_logprobs
from selfredteam.rl.model import LORA_TARGETS, TrainablePolicy
from tests.rl.tiny import TOKENIZER, tiny_model

PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13], [14]]
RESPONSES = [[20, 21, 1], [22, 23, 24, 25], [26], [27, 28]]


def manual_logprobs(model, prompt, response):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0]
    lp = torch.log_softmax(logits.float(), -1)
    return torch.stack([lp[len(prompt) - 1 + t, tok] for t, tok in enumerate(response)])


def test_response_logprobs_match_unpadded_forward():
    model = tiny_model()
    batch = pack(PROMPTS, RESPONSES, pad_id=0)
    with torch.no_grad():
        lp, ent, _ = response_logprobs(model, batch, with_entropy=True)
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        assert torch.allclose(lp[i, : len(r)], manual_logprobs(model, p, r), atol=1e-5)
        assert (lp[i, len(r):] == 0).all()
    assert (ent[batch.response_mask.bool()] > 0).all()


def lora_policy(seed=0, sharing="shared", frozen_layers=0):
    """LoRA on all layers, or on the top layer only with the bottom one frozen (`frozen_layers=1`)."""
    base = tiny_model(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights=False,
                     layers_to_transform=[1] if frozen_layers else None)
    if sharing == "role-adapters":
        model = get_peft_model(base, cfg, adapter_name="attacker")
        model.add_adapter("defender", cfg)
    else:
        model = get_peft_model(base, cfg)
    return TrainablePolicy(model, TOKENIZER, sharing, frozen_layers=frozen_layers)


def test_lora_disabled_logprobs_equal_base_model():
    reference = tiny_model(0)
    policy = lora_policy(0)
    batch = pack(PROMPTS, RESPONSES, pad_id=0)
    with torch.no_grad():
        base_lp, _, _ = response_logprobs(reference, batch)
        with policy.reference() as ref:
            ref_lp, _, _ = response_logprobs(ref, batch)
        pol_lp, _, _ = response_logprobs(policy.model, batch)
    assert torch.allclose(base_lp, ref_lp, atol=1e-6)
    assert not torch.allclose(base_lp, pol_lp, atol=1e-4)  # the (non-zero) adapter is live


def full_policy(seed=0):
    """Full fine-tuning: every weight trains, a frozen copy is the reference."""
    model = tiny_model(seed)
    return TrainablePolicy(model, TOKENIZER, "shared", reference=copy.deepcopy(model).eval().requires_grad_(False))


def samples():
    return [Sample("defender" if i % 2 else "attacker", p, r, reward=float(i) - 1.5, group=i // 2)
            for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES))]


def run_update(micro, sharing="shared", frozen_layers=0, **kw):
    policy = lora_policy(0, sharing, frozen_layers)
    cfg = TrainConfig(lr=1e-2, train_batch_size=4, micro_batch_size=micro, kl_coef=0.05, **kw)
    stats = Learner(policy, cfg).update(samples())
    return policy, stats


def lora_state(policy):
    return {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("sharing", ["shared", "role-adapters"])
def test_gradient_accumulation_equals_one_big_batch(sharing):
    a, stats = run_update(4, sharing)
    b, _ = run_update(1, sharing)
    sa, sb = lora_state(a), lora_state(b)
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)
    assert stats["loss/grad_norm"] > 0 and "kl/mean" in stats


@pytest.mark.parametrize("sharing", ["shared", "role-adapters"])
def test_shared_frozen_trunk_gives_the_same_update(sharing):
    """LoRA on the top layer only: the policy passes start from the reference pass's cached
    bottom-layer states instead of recomputing them; the update must not change."""
    a, stats_a = run_update(2, sharing, frozen_layers=1, epochs_per_batch=2)
    assert a.frozen_layers == 1
    c = lora_policy(0, sharing, frozen_layers=1)
    c.frozen_layers = 0  # same adapters, every pass through the whole stack
    cfg = TrainConfig(lr=1e-2, train_batch_size=4, micro_batch_size=2, kl_coef=0.05, epochs_per_batch=2)
    stats_c = Learner(c, cfg).update(samples())
    sa, sc = lora_state(a), lora_state(c)
    assert all(torch.allclose(sa[k], sc[k], atol=1e-6) for k in sa)
    assert abs(stats_a["loss/policy"] - stats_c["loss/policy"]) < 1e-6
    assert len(a.model.get_base_model().model.layers) == 2  # the full stack is restored


def test_update_moves_adapters_not_reference():
    policy = lora_policy(0)
    before = lora_state(policy)
    base_before = copy.deepcopy({n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_" not in n})
    Learner(policy, TrainConfig(lr=1e-2, train_batch_size=4, micro_batch_size=2)).update(samples())
    after = lora_state(policy)
    assert any(not torch.allclose(before[k], after[k]) for k in before)
    assert all(torch.equal(p, base_before[n]) for n, p in policy.model.named_parameters() if "lora_" not in n)


def test_role_adapters_train_each_role_separately():
    policy = lora_policy(0, "role-adapters")
    before = lora_state(policy)
    only_attacker = [s for s in samples() if s.role == "attacker"]
    Learner(policy, TrainConfig(lr=1e-2, train_batch_size=2, micro_batch_size=1)).update(only_attacker)
    after = lora_state(policy)
    changed = {k for k in before if not torch.allclose(before[k], after[k])}
    assert changed and all(".attacker." in k for k in changed)


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_group_estimators_run(algo):
    _, stats = run_update(2, algorithm=algo, samples_per_prompt=2)
    assert stats["samples"] == 4


def test_reused_batch_is_clipped():
    _, stats = run_update(4, epochs_per_batch=3, clip_eps=0.01)
    assert stats["loss/clip_frac"] > 0


def test_merged_sampling_restores_base_weights_bit_exactly():
    policy = lora_policy(0)
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    batch = pack(PROMPTS, RESPONSES, pad_id=0)
    with torch.no_grad():
        live, _, _ = response_logprobs(policy.model, batch)
        for _ in range(3):
            with policy.merged():
                merged, _, _ = response_logprobs(policy.model, batch)
    assert torch.allclose(live, merged, atol=1e-5)  # merged weights = the same policy
    assert all(torch.equal(p, before[n]) for n, p in policy.model.named_parameters())


@pytest.mark.parametrize("sharing", ["shared", "role-adapters"])
def test_trunk_states_captured_while_sampling_give_the_same_update(sharing):
    """The sampler keeps the frozen trunk's states of each turn; the learner then runs only the
    top layers, also for the reference pass, and must make the same update as from scratch."""
    from types import SimpleNamespace

    from selfredteam.policy.base import SamplingParams
    from selfredteam.policy.hf import TransformersPolicy

    a, c = lora_policy(0, sharing, frozen_layers=1), lora_policy(0, sharing, frozen_layers=1)
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=1, decode=lambda ids, **kw: " ".join(map(str, ids)))
    sampler = TransformersPolicy(a.model, tok, "tiny")
    torch.manual_seed(0)
    gens = []
    for role, prompts in (("attacker", PROMPTS[:2]), ("defender", PROMPTS[2:])):
        with a.sampling(role), sampler.capturing(a.trunk_layer()):
            gens += sampler._generate_batch(prompts, SamplingParams(max_new_tokens=5, temperature=1.0))
    roles = ["attacker", "attacker", "defender", "defender"]
    with_trunk = [Sample(r, g.prompt_ids, g.completion_ids, float(i) - 1.5, trunk=g.trunk_states)
                  for i, (r, g) in enumerate(zip(roles, gens))]
    assert all(s.trunk.shape == (len(s.prompt_ids) + len(s.response_ids), 32) for s in with_trunk)
    without = [copy.copy(s) for s in with_trunk]
    for s in without:
        s.trunk = None
    cfg = TrainConfig(lr=1e-2, train_batch_size=4, micro_batch_size=2, kl_coef=0.05, epochs_per_batch=2)
    stats_a, stats_c = Learner(a, cfg).update(with_trunk), Learner(c, cfg).update(without)
    sa, sc = lora_state(a), lora_state(c)
    assert all(torch.allclose(sa[k], sc[k], atol=1e-6) for k in sa)
    assert abs(stats_a["loss/policy"] - stats_c["loss/policy"]) < 1e-6
    assert abs(stats_a["kl/mean"] - stats_c["kl/mean"]) < 1e-6


def test_sampling_keeps_the_adapter_live_over_fp16_packed_weights():
    """With packed fp16 frozen weights (CPU), sampling does not merge the adapter (that would force
    re-packing); either way the sampled policy is the current one."""
    from selfredteam.policy.cpu_fastpath import fp16_gemm_available, use_small_batch_linears

    if not fp16_gemm_available():
        pytest.skip("fbgemm fp16 GEMM is x86-only")
    policy = lora_policy(0)
    use_small_batch_linears(policy.model, fp16_weights=True)
    ids = torch.tensor([PROMPTS[0] + RESPONSES[0]] * 4)  # 4 rows x 7 tokens: the small-row path
    with torch.no_grad():
        exact = lora_policy(0).model(ids).logits  # the same policy in plain fp32
        with policy.sampling("defender") as model:
            assert not any(getattr(m, "merged", False) for m in model.modules())
            live = model(ids).logits
        with policy.merged("defender") as model:
            merged = model(ids).logits  # merged weights are new tensors: re-packed, not stale
    torch.testing.assert_close(live, exact, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(merged, exact, atol=2e-3, rtol=2e-3)
    with policy.reference() as ref, torch.no_grad():
        assert not torch.allclose(ref(ids).logits, live, atol=1e-3)  # the adapter was applied


def test_sft_rows_keep_their_trunk_states_and_train_the_same():
    """An SFT row's frozen-trunk states are kept on its first pass; later draws run only the top
    layers and must give the same NLL and the same update as passes through the whole stack."""
    rows = [Sample("defender", p, r, 0.0) for p, r in zip(PROMPTS, RESPONSES)]
    plain = [copy.copy(s) for s in rows]
    a, c = lora_policy(0, frozen_layers=1), lora_policy(0, frozen_layers=1)
    c.frozen_layers = 0  # same adapters, every pass through the whole stack
    cfg = TrainConfig(lr=1e-2, micro_batch_size=2)
    la, lc = Learner(a, cfg), Learner(c, cfg)
    for draw in (rows[:2], rows[1:], rows):  # the second and third draws reuse kept rows
        assert abs(la.sft_step(draw) - lc.sft_step([plain[rows.index(s)] for s in draw])) < 1e-6
    assert all(s.trunk is not None and s.trunk.shape == (len(s.prompt_ids) + len(s.response_ids), 32) for s in rows)
    assert all(s.trunk is None for s in plain)
    sa, sc = lora_state(a), lora_state(c)
    assert all(torch.allclose(sa[k], sc[k], atol=1e-6) for k in sa)


def _sft_step_move(lr_scale: float, **train) -> tuple[torch.Tensor, list[float]]:
    """One SFT warm-up step on a fresh LoRA policy: how far its adapters moved (flattened), and
    the optimizer's rates after it."""
    rows = [Sample("defender", p, r, 0.0) for p, r in zip(PROMPTS, RESPONSES)]
    policy = lora_policy(0)
    before = lora_state(policy)
    learner = Learner(policy, TrainConfig(lr=1e-2, micro_batch_size=2, **train))
    learner.sft_step([copy.copy(s) for s in rows], lr_scale=lr_scale)
    after = lora_state(policy)
    return torch.cat([(after[k] - before[k]).flatten() for k in before]), [g["lr"] for g in learner.optimizer.param_groups]


def test_sft_step_scales_the_update_by_lr_scale_and_keeps_the_rate():
    """train.sft.warmup_schedule: a warm-up step at half the rate moves the weights half as far (Adam's
    first step is lr x g / |g|), and the optimizer's rate is train.lr again after it (the RL steps
    and the LR scheduler read it)."""
    (full, full_rates), (half, half_rates) = _sft_step_move(1.0), _sft_step_move(0.5)
    assert full_rates == half_rates == [1e-2]
    torch.testing.assert_close(half, 0.5 * full, atol=1e-7, rtol=1e-4)


def test_an_sft_warm_up_step_runs_at_its_own_rate_under_an_rl_warmup_ramp():
    """With train.warmup_steps (the RL steps' ramp) the optimizer's rate before the first RL step
    is train.lr / warmup_steps; a warm-up step still runs at lr_scale x train.lr (it once took
    the ramp's rate: 4x too small here), and the ramp's rate is back after it."""
    (plain, plain_rates), (ramped, ramped_rates) = _sft_step_move(0.5), _sft_step_move(0.5, warmup_steps=4)
    assert plain_rates == [1e-2] and ramped_rates == [1e-2 / 4]
    torch.testing.assert_close(ramped, plain)


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_the_rl_steps_rate_follows_train_lr_schedule_after_the_warmup_ramp(schedule):
    """train.lr_schedule: one scheduler step per RL update; the ramp (train.warmup_steps) and the
    decay over train.steps multiply."""
    learner = Learner(lora_policy(0), TrainConfig(lr=1e-2, steps=4, warmup_steps=2, lr_schedule=schedule))
    rates = []
    for _ in range(4):
        rates.append(learner.optimizer.param_groups[0]["lr"])
        learner.scheduler.step()
    decay = [1.0, 0.75, 0.5, 0.25] if schedule == "linear" else [1.0] * 4
    assert rates == pytest.approx([1e-2 * r * d for r, d in zip([0.5, 1, 1, 1], decay)])


def test_a_loaded_state_runs_at_this_configs_rate_on_the_saved_schedule():
    """A resume with the same config continues at the saved rate; one with a new train.lr (the RL
    steps after a finished warm-up at another rate) runs at it, on the scheduler's saved step,
    instead of silently at the saved rate (the optimizer state carries its lr)."""
    rows = [Sample("defender", p, r, 0.0) for p, r in zip(PROMPTS, RESPONSES)]
    saved = Learner(lora_policy(0), TrainConfig(lr=1e-2, warmup_steps=4, micro_batch_size=2))
    saved.sft_step([copy.copy(s) for s in rows])
    saved.scheduler.step()  # one RL update's step: the warm-up lambda is now at 2/4
    state = saved.state_dict()
    for lr in (1e-2, 3e-3):
        learner = Learner(lora_policy(0), TrainConfig(lr=lr, warmup_steps=4, micro_batch_size=2))
        learner.load_state_dict(state)
        assert [g["lr"] for g in learner.optimizer.param_groups] == pytest.approx([lr * 2 / 4])
        assert learner.scheduler.get_last_lr() == pytest.approx([lr * 2 / 4])
        learner.scheduler.step()
        assert learner.scheduler.get_last_lr() == pytest.approx([lr * 3 / 4])


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_the_warm_up_schedules_start_at_the_full_rate_and_decay_toward_zero(schedule):
    from selfredteam.rl.learner import lr_decay_scale

    scales = [lr_decay_scale(schedule, i, 100) for i in range(100)]
    assert scales[0] == 1.0 and lr_decay_scale(schedule, 0, 1) == 1.0
    if schedule == "constant":
        assert set(scales) == {1.0}
    else:
        assert all(a > b for a, b in zip(scales, scales[1:])) and 0 < scales[-1] < 0.011
        assert abs(scales[50] - 0.5) < 1e-9  # both are halfway down halfway through


def test_sft_trunk_states_stop_at_the_memory_cap(monkeypatch):
    monkeypatch.setattr("selfredteam.rl.learner.SFT_TRUNK_BYTES", 1)
    rows = [Sample("defender", p, r, 0.0) for p, r in zip(PROMPTS, RESPONSES)]
    Learner(lora_policy(0, frozen_layers=1), TrainConfig(lr=1e-2, micro_batch_size=2)).sft_step(rows)
    assert all(s.trunk is None for s in rows)


def test_sft_token_weights_scale_the_nll():
    """Unit weights give the plain NLL; a weighted token counts that many times, in the sum and in
    the normaliser."""
    rows = [Sample("defender", p, r, 0.0) for p, r in zip(PROMPTS, RESPONSES)]
    cfg = TrainConfig(lr=0.0, micro_batch_size=4)
    plain = Learner(lora_policy(0), cfg).sft_backward(rows, 1.0)
    ones = [copy.copy(s) for s in rows]
    for s in ones:
        s.weights = [1.0] * len(s.response_ids)
    assert abs(Learner(lora_policy(0), cfg).sft_backward(ones, 1.0) - plain) < 1e-6
    heavy = [copy.copy(s) for s in ones]
    heavy[1].weights = [3.0] + [1.0] * (len(heavy[1].response_ids) - 1)
    batch = pack([s.prompt_ids for s in rows], [s.response_ids for s in rows], pad_id=0)
    with torch.no_grad():
        lp, _, _ = response_logprobs(lora_policy(0).model, batch)
    expected = -(lp.sum() + 2 * lp[1, 0]) / (batch.response_mask.sum() + 2)
    assert abs(Learner(lora_policy(0), cfg).sft_backward(heavy, 1.0) - float(expected)) < 1e-5


@pytest.mark.parametrize("layout", ["fused head", "generic logits"])
def test_set_logprob_is_the_mass_of_the_token_set_at_the_column(layout, monkeypatch):
    if layout == "generic logits":  # a model whose decoder and head the layout table does not know
        monkeypatch.setattr("selfredteam.rl.logprobs.decoder_and_head", lambda model: None)
    model = tiny_model()
    batch = pack(PROMPTS, RESPONSES, pad_id=0)
    cols, tokens = torch.tensor([1, -1, 0, 1]), torch.tensor([20, 22, 30])
    with torch.no_grad():
        got = response_logprobs(model, batch, set_at=(cols, tokens)).set_logp
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        if cols[i] < 0:
            assert got[i] == 0
            continue
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor([p + r])).logits[0, len(p) - 1 + cols[i]].float(), -1)
        assert abs(float(got[i]) - float(probs[tokens].sum().log())) < 1e-5


def decided_rows(opener=20):
    """Two refusals (label harmful) and two answers (label benign), the decision at the answer's
    first token; token `opener` opens a refusal."""
    rows = [Sample("defender", p, r, 0.0, prompt_class=c, decision_at=0, refusal_openers=(opener,))
            for p, r, c in zip(PROMPTS, RESPONSES, ("harmful", "benign", "harmful", "benign"))]
    return rows


def test_decision_bce_is_the_cross_entropy_of_the_refusal_decision():
    from selfredteam.rl.learner import decision_bce

    lp = torch.log(torch.tensor([0.9, 0.2, 0.5]))
    expected = -(torch.log(torch.tensor(0.9)) + torch.log(torch.tensor(0.8)))
    assert abs(float(decision_bce(lp, ["harmful", "benign", ""])) - float(expected)) < 1e-6
    rows = decided_rows()
    learner = Learner(lora_policy(0), TrainConfig(lr=0.0, micro_batch_size=2))
    plain = Learner(lora_policy(0), TrainConfig(lr=0.0, micro_batch_size=2)).sft_backward(
        [Sample("defender", s.prompt_ids, s.response_ids, 0.0) for s in rows], 1.0)
    assert abs(learner.sft_backward(rows, 1.0) - plain) < 1e-6  # off: the NLL alone, the decision only logged
    batch = pack([s.prompt_ids for s in rows], [s.response_ids for s in rows], pad_id=0)
    with torch.no_grad():
        p = response_logprobs(lora_policy(0).model, batch, set_at=(torch.zeros(4, dtype=torch.long),
                                                                   torch.tensor([20]))).set_logp.exp()
    stats = learner.decision_stats
    assert abs(stats["sft/p_refuse_harmful"] - float(p[[0, 2]].mean())) < 1e-5
    assert abs(stats["sft/p_refuse_benign"] - float(p[[1, 3]].mean())) < 1e-5
    bce = -(p[0].log() + p[2].log() + (1 - p[1]).log() + (1 - p[3]).log()) / 4
    assert abs(stats["sft/decision_bce"] - float(bce)) < 1e-5


def test_decision_bce_pulls_refusal_apart_by_label():
    """Both refusals open with token 20, the answers with others: the decision term lowers P(refuse)
    on the answers' prompts and raises it on the refusals' beyond what the NLL alone does."""
    from selfredteam.config import SftConfig

    def trained(weight):
        rows = decided_rows(opener=20)
        rows[2].response_ids = [20, 26]  # both refusals open alike
        learner = Learner(lora_policy(0), TrainConfig(lr=2e-2, micro_batch_size=4, sft=SftConfig(decision_bce=weight)))
        for _ in range(15):
            learner.sft_step(rows)
        learner.sft_backward(rows, 1.0)
        return learner.decision_stats

    off, on = trained(0.0), trained(5.0)
    assert on["sft/decision_bce"] < off["sft/decision_bce"]
    assert on["sft/p_refuse_harmful"] > off["sft/p_refuse_harmful"]
    assert on["sft/p_refuse_benign"] < off["sft/p_refuse_benign"]


@pytest.mark.parametrize("normalize", ["token", "sequence"])
def test_answer_weight_weighs_answer_rows_in_the_nll_and_the_decision_term(normalize):
    """train.sft.answer_weight w: each answer row (label benign) counts w times in the NLL (per token or
    per row) and in the decision BCE, refusal rows once; w = 1 is the unweighted loss."""
    from selfredteam.config import SftConfig
    from selfredteam.rl.learner import decision_bce

    lp = torch.log(torch.tensor([0.9, 0.2]))
    assert abs(float(decision_bce(lp, ["harmful", "benign"], answer_weight=3.0))
               - float(-(torch.log(torch.tensor(0.9)) + 3 * torch.log(torch.tensor(0.8))))) < 1e-6

    rows = decided_rows()
    batch = pack([s.prompt_ids for s in rows], [s.response_ids for s in rows], pad_id=0)
    with torch.no_grad():
        out = response_logprobs(lora_policy(0).model, batch, set_at=(torch.zeros(4, dtype=torch.long),
                                                                     torch.tensor([20])))
    tok_lp = out.logp * batch.response_mask
    w = torch.tensor([1.0, 3.0, 1.0, 3.0])  # rows 1 and 3 are answers
    if normalize == "token":
        nll = -(w[:, None] * tok_lp).sum() / (w * batch.response_mask.sum(1)).sum()
    else:
        nll = -(w * tok_lp.sum(1) / batch.response_mask.sum(1)).sum() / w.sum()
    p = out.set_logp.exp()
    bce = -(p[0].log() + p[2].log() + 3 * (1 - p[1]).log() + 3 * (1 - p[3]).log()) / w.sum()

    def learner(weight):
        return Learner(lora_policy(0), TrainConfig(lr=0.0, micro_batch_size=2, sft=SftConfig(
            answer_weight=weight, decision_bce=1.0, normalize=normalize)))

    weighted = learner(3.0)
    assert abs(weighted.sft_backward(rows, 1.0) - float(nll)) < 1e-5
    assert abs(weighted.decision_stats["sft/decision_bce"] - float(bce)) < 1e-5
    plain = learner(1.0)
    even = -(tok_lp.sum() / batch.response_mask.sum()) if normalize == "token" else \
        -(tok_lp.sum(1) / batch.response_mask.sum(1)).mean()
    assert abs(plain.sft_backward(rows, 1.0) - float(even)) < 1e-5


def test_a_skipped_step_names_the_tensors_whose_gradient_went_non_finite():
    """Where a NaN sits is the first clue to its cause (one attention kernel, the top layer, every
    tensor), and the step's gradients are dropped right after: the learner keeps the names."""
    policy = lora_policy(0)
    for p in policy.trainable_parameters():
        p.grad = torch.zeros_like(p)
    named = dict(policy.model.named_parameters())
    q = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.default.weight"
    named[q].grad[0, 0] = float("inf")
    total = len(policy.trainable_parameters())
    assert nonfinite_grads(policy.model) == f"1 of {total} trainable tensors: layers.1.self_attn.q_proj.lora_B.default"
    named[q].grad[0, 0] = 1e30  # finite, but its square overflows the norm
    assert nonfinite_grads(policy.model).startswith(f"none of {total} trainable tensors")

    rows = [Sample("defender", p, r, 0.0) for p, r in zip(PROMPTS, RESPONSES)]
    rows[0].weights = [float("nan")] * len(rows[0].response_ids)
    learner = Learner(policy, TrainConfig(lr=1e-2, micro_batch_size=2))
    learner.sft_step(rows)
    assert learner.skipped_steps == 1
    assert learner.nonfinite_where.startswith(f"{total} of {total} trainable tensors: layers.0.")
    assert learner.nonfinite_where.endswith(f"and {total - 3} more")


def test_a_step_with_a_nan_gradient_is_skipped_and_counted():
    rows = [Sample("defender", p, r, 0.0) for p, r in zip(PROMPTS, RESPONSES)]
    bad = [copy.copy(s) for s in rows]
    bad[0].weights = [float("nan")] * len(bad[0].response_ids)
    policy = lora_policy(0)
    learner = Learner(policy, TrainConfig(lr=1e-2, micro_batch_size=2))
    before = lora_state(policy)
    assert math.isnan(learner.sft_step(bad))
    after = lora_state(policy)
    assert all(torch.equal(before[k], after[k]) for k in before)  # not applied
    assert learner.skipped_steps == 1 and learner.nonfinite_streak == 1
    learner.sft_step(rows)
    assert learner.nonfinite_streak == 0 and all(torch.isfinite(v).all() for v in lora_state(policy).values())
    stats = learner.update(samples())
    assert "loss/skipped_steps" not in stats  # only when this update skipped one
