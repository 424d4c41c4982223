"""Input budgets: prompts and judge inputs over the limit are cut in the middle, counted, warned about."""

import logging

import pytest

from selfredteam.budget import CUT_MARKER, TruncationCounter, clip_middle, keep_ends
from selfredteam.errors import UserError
from selfredteam.game.prompts import attacker_turn, defender_turn
from selfredteam.judges.base import ClippedJudge
from tests.fakes import FakeJudge


def test_keep_ends_and_clip_middle():
    assert keep_ends("abcdefgh", 5) == ("abc", "gh")
    assert keep_ends([1, 2, 3], 1) == ([1], [])
    assert clip_middle("short", 100) == "short"
    text = "START" + "x" * 10_000 + "END"
    cut = clip_middle(text, 200)
    assert len(cut) == 200 and cut.startswith("START") and cut.endswith("END") and CUT_MARKER in cut


def test_counter_warns_once_then_counts(caplog):
    counter = TruncationCounter("policy prompt", "generation.max_prompt_length", 512, "tokens")
    assert counter.summary() is None
    with caplog.at_level(logging.WARNING, logger="selfredteam"):
        counter.record(30_000)
        counter.record(40_000)
    assert len(caplog.records) == 1 and "generation.max_prompt_length=512" in caplog.text
    assert counter.count == 2 and "2 policy prompts were cut" in counter.summary()


def test_clip_longest_cuts_only_the_prompt_message():
    turn = defender_turn("q" * 5000, cot=True)
    cut = turn.clip_longest(lambda s: s[:10])
    assert cut.messages[0] == turn.messages[0] and cut.messages[1]["content"] == "q" * 10
    assert turn.messages[1]["content"].startswith("q" * 5000)  # the original is untouched
    assert cut.prefix == turn.prefix


def test_transformers_policy_fits_a_huge_prompt_to_its_budget(tiny_model_dir):
    from selfredteam.config import ModelConfig
    from selfredteam.policy.hf import TransformersPolicy

    policy = TransformersPolicy.from_config(ModelConfig(name_or_path=str(tiny_model_dir)), max_prompt_tokens=256)
    ids = policy.encode(defender_turn("BEGINNING " + "blah " * 20_000 + " FINAL REQUEST", cot=True))
    assert len(ids) <= 256 and policy.truncation.count == 1
    text = policy.tokenizer.decode(ids)
    assert "BEGINNING" in text and "FINAL REQUEST" in text and CUT_MARKER.strip() in text
    assert "<answer>" in text  # the format instructions at the end of the user message survive
    short = policy.encode(attacker_turn("a short seed", True, cot=True))
    assert policy.tokenizer.decode(short).count(CUT_MARKER.strip()) == 0 and policy.truncation.count == 1
    tight = TransformersPolicy(policy.model, policy.tokenizer, "tiny", max_prompt_tokens=64)
    with pytest.raises(UserError, match="leaves almost no room"):
        tight.encode(defender_turn("word " * 500, cot=True))


def test_openai_policy_fits_by_characters():
    from selfredteam.http import OpenAIClient
    from selfredteam.policy.openai_compat import OpenAIChatPolicy

    policy = OpenAIChatPolicy(OpenAIClient("http://127.0.0.1:9/v1"), "m", max_prompt_tokens=100)
    turn = policy.fit(defender_turn("A" + "b" * 5000 + "Z", cot=False))
    assert sum(len(m["content"]) for m in turn.messages) <= 400 and policy.truncation.count == 1
    assert turn.messages[1]["content"].startswith("A") and turn.messages[1]["content"].endswith("Z")


def test_clipped_judge_cuts_prompt_and_response():
    inner = FakeJudge()
    judge = ClippedJudge(inner, max_chars=300)
    judge.judge([("p" * 1000, "r" * 50), ("ok", None), ("x", "y" * 999)])
    assert [len(p) for p, _ in inner.seen] == [300, 2, 1]
    assert [None if r is None else len(r) for _, r in inner.seen] == [50, None, 300]
    assert judge.truncation.count == 2 and judge.judge_id == inner.judge_id
