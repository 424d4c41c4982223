"""Stopping a CoT turn at `</answer>`: the criterion fires on generated text only, and the
kept completion ends exactly at the stop string (padding after it is never scored)."""

import torch

from selfredteam.config import ModelConfig
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
    from selfredteam.config import GenerationConfig

    g = GenerationConfig()
    assert sampling_params(g, "defender", cot=True).stop == ("</answer>",)
    assert sampling_params(g, "defender", cot=False).stop == ()
    g.stop_at_answer = False
    assert sampling_params(g, "attacker", cot=True).stop == ()
