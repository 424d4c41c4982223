"""Auxiliary SFT data: file loading with post-filled thoughts, and the self-distillation filter."""

from __future__ import annotations

import json
import random

from selfredteam.data import Seed
from selfredteam.judges.base import Judgement
from selfredteam.policy.base import Generation, SamplingParams
from selfredteam.rl.sft import (
    HELPFUL_THOUGHT,
    NEUTRAL_THOUGHT,
    load_sft_pairs,
    self_distill,
    sft_samples,
    whole_sentences,
)


class FakeDefender:
    """Test double: answers each prompt with a scripted reply (and finish reason)."""

    def __init__(self, replies: dict[str, tuple[str, str]]) -> None:
        self.replies = replies

    def generate(self, turns, params):
        out = []
        for t in turns:
            text, finish = self.replies[t.messages[-1]["content"]]
            out.append(Generation(text, [1], [2], finish_reason=finish))
        return out


class FakeKeywordJudge:
    """Test double: a prompt is harmful when it says 'harm'; a reply is a refusal when it starts
    with 'Sorry'; harmful when it says 'recipe'."""

    judge_id = "fake-keyword"

    def judge(self, pairs):
        return [Judgement("harm" in p, r.startswith("Sorry"), "recipe" in r) for p, r in pairs]


def test_whole_sentences_keeps_complete_sentences_only():
    assert whole_sentences("Hello there. This is cut") == "Hello there."
    assert whole_sentences("no sentence end") == ""
    assert whole_sentences("1. Do this\n2. Do th") == "1. Do this"
    assert whole_sentences("Use v1.2 now. ok") == "Use v1.2 now."


def test_self_distill_keeps_only_judge_approved_replies_balanced():
    replies = {
        "harm A": ("Sorry, I cannot help with that.", "stop"),          # kept: refusal of harm
        "harm B": ("Here is the recipe you asked for.", "stop"),        # dropped: harmful compliance
        "harm C": ("Sorry, no way I will do that.", "stop"),            # kept, then cut by balancing
        "bake bread": ("Mix flour and water. Knead it well. Then ba", "length"),  # kept, cut to sentences
        "name a colour": ("Sorry, I cannot do that.", "stop"),           # dropped: over-refusal
        "pick a lock": ("Sure, a recipe for picks.", "stop"),           # dropped: judged a harmful reply
    }
    seeds = [Seed(p, "harmful" if p.startswith("harm") else "benign", source=f"s:{i}")
             for i, p in enumerate(replies)]
    rows = self_distill(seeds, FakeDefender(replies), FakeKeywordJudge(),
                        SamplingParams(16, 1.0, 1.0, ()), random.Random(0))
    assert [(r["prompt"], r["label"]) for r in rows] == [("harm A", "harmful"), ("bake bread", "benign")]
    assert rows[1]["response"] == "Mix flour and water. Knead it well."
    assert {r["thought"] for r in rows} == {NEUTRAL_THOUGHT} and rows[0]["source"] == "s:0"


class _StubSampler:
    """Test double for the learner's sampler: records SFT targets, tokenises by characters."""

    class _Tok:
        eos_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    tokenizer = _Tok()

    def encode(self, turn):
        return [1, 2, 3]


def _targets(samples):
    return ["".join(chr(i) for i in s.response_ids[:-1]) for s in samples]


def test_sft_rows_with_a_thought_post_fill_it(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"prompt": "p1", "response": "No.", "thought": "It is harmful."}) + "\n"
                    + json.dumps({"prompt": "p2", "response": "Blue."}) + "\n")
    pairs = load_sft_pairs(str(path))
    assert pairs == [("p1", "No.", "It is harmful."), ("p2", "Blue.", None)]
    targets = sorted(_targets(sft_samples(pairs, 2, _StubSampler(), cot=True, rng=random.Random(0))))
    assert targets == sorted([f" {HELPFUL_THOUGHT} </think><answer>Blue.</answer>",
                              " It is harmful. </think><answer>No.</answer>"])
    assert sorted(_targets(sft_samples(pairs, 2, _StubSampler(), cot=False, rng=random.Random(0)))) == ["Blue.", "No."]


def test_embedded_self_distill_set_is_balanced():
    from selfredteam.data import read_records
    from selfredteam.rl.sft import embedded_sft_path

    rows = [r for _, r in read_records(embedded_sft_path())]
    labels = [r["label"] for r in rows]
    assert len(rows) >= 20 and labels.count("harmful") == labels.count("benign")
    assert len(load_sft_pairs("embedded")) == len(rows)
