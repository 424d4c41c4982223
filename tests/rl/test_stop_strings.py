"""Sampling in the transformers backend: a CoT turn stops at `</answer>` (the criterion fires on
generated text only, the kept completion ends exactly at the stop string, padding after it is
never scored), and tokens are drawn from exactly the tempered distribution the learner scores."""

import torch

from selfredteam.config import GenerationConfig, ModelConfig
from selfredteam.policy.base import sampling_params
from selfredteam.policy.hf import StopOnText, TransformersPolicy


def test_stop_on_text_and_cut_point(tiny_model_dir):
    policy = TransformersPolicy.from_config(ModelConfig(name_or_path=str(tiny_model_dir)))
    tok = policy.tokenizer
    prompt = tok("Format: <answer>...</answer>\n<think>", add_special_tokens=False)["input_ids"]
    done = tok(" fine</think><answer>Sure.</answer>", add_special_tokens=False)["input_ids"]
    going = tok(" fine</think><answer>Sure, here", add_special_tokens=False)["input_ids"]
    pad = tok.pad_token_id
    rows = torch.tensor([prompt + done, prompt + [pad] * (len(done) - len(going)) + going])
    crit = StopOnText(tok, ("</answer>",), prompt_width=len(prompt))
    assert crit(rows, None).tolist() == [True, False]
    assert not crit(torch.tensor([prompt]), None).any()  # "</answer>" in the prompt does not count

    ids = done + [pad, pad]
    cut = policy._stop_index(ids, ("</answer>",))
    assert tok.decode(ids[:cut]).endswith("</answer>") and cut == len(done)
    assert policy._stop_index(going, ("</answer>",)) is None


def test_stop_only_with_cot(tiny_model_dir):
    g = GenerationConfig()
    assert sampling_params(g, "defender", cot=True).stop == ("</answer>",)
    assert sampling_params(g, "defender", cot=False).stop == ()
    g.stop_at_answer = False
    assert sampling_params(g, "attacker", cot=True).stop == ()


def test_inverse_cdf_sampler_draws_from_the_tempered_distribution():
    from selfredteam.policy.hf import InverseCdfSampler

    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]]).repeat(20000, 1)
    out = InverseCdfSampler(temperature=0.7)(None, logits)
    picks = out.argmax(-1)
    assert torch.isinf(out).sum(-1).eq(4).all()  # exactly one finite entry per row: greedy picks it
    freq = torch.bincount(picks, minlength=5).float() / len(picks)
    torch.testing.assert_close(freq, torch.softmax(logits[0] / 0.7, -1), atol=0.01, rtol=0)
    # p = .644, .237, .087, ...: the top token alone reaches 0.6, the top two reach 0.8
    assert set(InverseCdfSampler(temperature=1.0, top_p=0.6)(None, logits).argmax(-1).tolist()) == {0}
    assert set(InverseCdfSampler(temperature=1.0, top_p=0.8)(None, logits).argmax(-1).tolist()) == {0, 1}


def test_sampling_ignores_the_checkpoints_generation_config(tiny_model_dir):
    """A repetition penalty or top-k in generation_config.json must not skew what is sampled:
    the learner scores the plain tempered distribution."""
    policy = TransformersPolicy.from_config(ModelConfig(name_or_path=str(tiny_model_dir)))
    policy.model.generation_config.repetition_penalty = 5.0
    policy.model.generation_config.top_k = 2
    seen = []
    original = policy.model._get_logits_processor

    def spy(*args, **kwargs):
        processors = original(*args, **kwargs)
        seen.extend(type(p).__name__ for p in processors)
        return processors

    policy.model._get_logits_processor = spy
    policy._generate_batch([[5, 6, 7]], sampling_params(GenerationConfig(defender_max_new_tokens=3), "defender", False))
    assert seen == ["InverseCdfSampler"]
