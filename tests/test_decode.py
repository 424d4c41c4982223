"""The transformers backend's sampling loop (policy/decode.py, policy/prefill.py) on a tiny real
Qwen2: shared prefixes, length groups, rows leaving the batch and kept prefixes change nothing
that is sampled or scored, compared with each prompt run alone through the plain model."""

import pytest
import torch

from selfredteam.policy.decode import decode
from selfredteam.policy.prefill import PREFIX_BLOCK, PrefixCache, length_groups, plan_prefixes
from tests.rl.test_learner import lora_policy
from tests.rl.tiny import tiny_model

TEMPLATE = list(range(10, 30))  # 20 tokens every prompt starts with (a chat template, a role's instructions)
PROMPTS = [TEMPLATE + [40, 41, 42], TEMPLATE + [43], TEMPLATE + [44, 45, 46, 47, 48, 49, 50, 51, 52, 53],
           [5, 6, 7], TEMPLATE + [40, 41, 55, 56, 57]]


def alone(model, prompt, steps):
    """Greedy tokens, their log-probs and the last layer-0 states for one prompt, plain forward
    passes over the whole sequence (no cache, no batch)."""
    ids, logps = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            out = model(torch.tensor([ids]), output_hidden_states=True)
            lp = torch.log_softmax(out.logits[0, -1].float(), -1)
            t = int(lp.argmax())
            ids.append(t)
            logps.append(float(lp[t]))
        states = model(torch.tensor([ids[:-1]]), output_hidden_states=True).hidden_states[1][0]
    return ids[len(prompt):], logps, states


def run(model, prompts, steps=6, eos=(), prefixes=None, capture=None):
    return decode(model, prompts, max_new_tokens=steps, temperature=0.0, top_p=1.0, pad_id=0, eos_ids=set(eos),
                  prefixes=prefixes, capture=capture)


def test_plan_prefixes_shares_block_aligned_prefixes_and_kept_ones():
    rows = [TEMPLATE + [1, 2], TEMPLATE + [1, 3], list(range(40, 60)), TEMPLATE[:9] + [7], TEMPLATE + [9]]
    shared = plan_prefixes(rows)
    assert shared[0] == shared[1] == 16  # 21 tokens in common, cut to the block
    assert shared[2] == 0 and shared[3] == 8 and shared[4] == 16
    kept = [tuple(TEMPLATE[:20])]
    assert plan_prefixes(rows, kept)[4] == 20  # a kept prefix longer than the in-call one wins
    assert plan_prefixes([TEMPLATE[:16], TEMPLATE[:16]]) == [8, 8]  # always one own token left
    assert all(n % PREFIX_BLOCK == 0 for n in shared)


def test_length_groups_bound_the_padding():
    groups = length_groups([100, 98, 150, 160, 10])
    assert sorted(map(sorted, groups)) == [[0, 1], [2, 3], [4]]
    for g in groups:
        lengths = [[100, 98, 150, 160, 10][i] for i in g]
        assert max(lengths) * len(g) - sum(lengths) <= 0.15 * sum(lengths)


def test_batched_decode_equals_each_prompt_alone():
    """Shared prefixes, length groups, rows that stop early (EOS) and leave the batch: every row
    gets exactly what it gets alone."""
    model = tiny_model(0)
    steps = 6
    ref = [alone(model, p, steps) for p in PROMPTS]
    eos = {ref[1][0][2]}  # the second prompt's third token ends it (and whatever else emits it)
    rows = run(model, PROMPTS, steps, eos=eos)
    for row, (ids, logps, _) in zip(rows, ref):
        n = next((k + 1 for k, t in enumerate(ids) if t in eos), steps)
        assert row.ids == ids[:n]
        torch.testing.assert_close(torch.tensor(row.logprobs), torch.tensor(logps[:n]), atol=1e-5, rtol=0)
        assert row.finish == ("stop" if n < steps or ids[steps - 1] in eos else "length")
    assert len(rows[1].ids) == 3


@pytest.mark.parametrize("sharing", ["shared", "role-adapters"])
def test_kept_prefixes_give_the_same_samples_and_trunk_states(sharing):
    """LoRA on the top layer, the bottom one frozen: the second call takes the template's bottom
    keys and values from the cache and recomputes only the top layer, with the adapter live;
    tokens, log-probs and the captured trunk states equal a full pass."""
    policy = lora_policy(0, sharing, frozen_layers=1)
    model, trunk = policy.model, policy.trunk_layer()
    cache = PrefixCache()
    with policy.role("defender"):
        first = run(model, PROMPTS, prefixes=cache, capture=trunk)
        assert cache.misses and not cache.hits and cache.entries
        second = run(model, PROMPTS, prefixes=cache, capture=trunk)
        assert cache.hits
        for a, b, prompt in zip(first, second, PROMPTS):
            ids, logps, states = alone(model, prompt, 6)
            assert a.ids == b.ids == ids
            torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(logps), atol=1e-5, rtol=0)
            kept = torch.cat(b.states)  # prompt, then one row per token fed back
            torch.testing.assert_close(kept, states[: len(kept)], atol=1e-5, rtol=1e-5)
            assert kept.shape[0] == len(prompt) + len(ids) - 1


def test_kept_prefixes_are_dropped_when_a_frozen_weight_changes():
    model = tiny_model(0).requires_grad_(False)  # eval: every layer frozen, whole prefixes kept
    cache = PrefixCache()
    run(model, PROMPTS, prefixes=cache)
    assert cache.entries
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(1.5)  # in place: same storage, new version
    rows = run(model, PROMPTS, prefixes=cache)
    assert not cache.hits  # the old entries were dropped, not served
    for row, prompt in zip(rows, PROMPTS):
        assert row.ids == alone(model, prompt, 6)[0]


def test_a_trained_bottom_layer_keeps_nothing():
    policy = lora_policy(0)  # adapters on every layer: no frozen trunk
    cache = PrefixCache()
    rows = run(policy.model, PROMPTS, prefixes=cache)
    assert not cache.entries
    for row, prompt in zip(rows, PROMPTS):
        assert row.ids == alone(policy.model, prompt, 6)[0]
