"""Sampling in the transformers backend: a CoT turn stops at `</answer>` (the check reads
generated text only, the kept completion ends exactly at the stop string, nothing after it is
scored), and tokens are drawn from exactly the tempered distribution the learner scores."""

import torch

from selfredteam.config import GenerationConfig, ModelConfig
from selfredteam.game.play import sampling_params
from selfredteam.game.prompts import defender_turn
from selfredteam.policy.base import SamplingParams
from selfredteam.policy.hf import TransformersPolicy


def test_a_row_ends_at_its_stop_string(tiny_model_dir):
    """The stop check reads only generated ids (a "</answer>" in the prompt does not count) and
    fires at the token that completes the stop string, so nothing after it is kept or scored."""
    policy = TransformersPolicy.from_config(ModelConfig(name_or_path=str(tiny_model_dir)))
    tok = policy.tokenizer
    stopped = policy._stopped(("</answer>",))
    done = tok(" fine</think><answer>Sure.</answer>", add_special_tokens=False)["input_ids"]
    going = tok(" fine</think><answer>Sure, here", add_special_tokens=False)["input_ids"]
    assert stopped(done) and not stopped(going) and not stopped(done[:-1])
    assert policy._stopped(()) is None

    # A stop string that sampling soon hits ("e": in a large share of the vocabulary): each row
    # is cut at the token that completes it.
    torch.manual_seed(0)
    gens = policy.generate([defender_turn("Hi", cot=False)] * 8, SamplingParams(40, 1.0, stop=("e",)))
    hits = [g for g in gens if g.finish_reason == "stop" and g.completion_ids[-1] not in policy.eos_ids]
    assert len(hits) >= 6
    for g in hits:
        assert "e" in tok.decode(g.completion_ids) and "e" not in tok.decode(g.completion_ids[:-1])


def test_stop_only_with_cot(tiny_model_dir):
    g = GenerationConfig()
    assert sampling_params(g, "defender", cot=True).stop == ("</answer>",)
    assert sampling_params(g, "defender", cot=False).stop == ()
    g.stop_at_answer = False
    assert sampling_params(g, "attacker", cot=True).stop == ()


def test_sample_tokens_draws_from_the_tempered_distribution():
    from selfredteam.policy.decode import BLOCK, sample_tokens

    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]]).repeat(20000, 1)
    picks, logp = sample_tokens(logits, temperature=0.7)
    p = torch.softmax(logits[0] / 0.7, -1)
    freq = torch.bincount(picks, minlength=5).float() / len(picks)
    torch.testing.assert_close(freq, p, atol=0.01, rtol=0)
    torch.testing.assert_close(logp, p.log()[picks], atol=1e-5, rtol=0)  # the tempered log-prob of each pick
    # p = .644, .237, .087, ...: the top token alone reaches 0.6, the top two reach 0.8
    assert set(sample_tokens(logits, 1.0, top_p=0.6)[0].tolist()) == {0}
    assert set(sample_tokens(logits, 1.0, top_p=0.8)[0].tolist()) == {0, 1}
    # A vocabulary of several blocks, not a multiple of the block size: each block's mass is
    # drawn in proportion, and never an entry of probability 0.
    vocab = 3 * BLOCK + 7
    wide = torch.full((4000, vocab), -float("inf"))
    hot = [5, BLOCK + 3, 3 * BLOCK + 6]
    wide[:, hot] = torch.tensor([0.0, 1.0, 2.0])
    picks, _ = sample_tokens(wide, 1.0)
    assert set(picks.tolist()) <= set(hot)
    freq = torch.stack([(picks == i).float().mean() for i in hot])
    torch.testing.assert_close(freq, torch.softmax(torch.tensor([0.0, 1.0, 2.0]), -1), atol=0.03, rtol=0)
    assert sample_tokens(wide[:2], 0.0)[0].tolist() == [3 * BLOCK + 6] * 2  # T=0: greedy


def test_sampling_ignores_the_checkpoints_generation_config(tiny_model_dir):
    """A repetition penalty or top-k in generation_config.json must not skew what is sampled:
    the learner scores the plain tempered distribution (top_k=1 would make every row greedy)."""
    policy = TransformersPolicy.from_config(ModelConfig(name_or_path=str(tiny_model_dir)))
    policy.model.generation_config.repetition_penalty = 5.0
    policy.model.generation_config.top_k = 1
    torch.manual_seed(0)
    gens = policy.generate([defender_turn("Hi", cot=False)] * 8, SamplingParams(3, 1.0))
    assert len({tuple(g.completion_ids) for g in gens}) > 1
