"""Auxiliary SFT data: file loading with post-filled thoughts, and the self-distillation filter."""

from __future__ import annotations

import json
import random

import pytest

from selfredteam.config import SftConfig, TrainConfig
from selfredteam.data import Seed
from selfredteam.errors import ConfigError
from selfredteam.judges.base import Judgement
from selfredteam.policy.base import Generation, SamplingParams
from selfredteam.rl.sft import (
    HELPFUL_THOUGHT,
    NEUTRAL_THOUGHT,
    SftRow,
    SftTerm,
    load_sft_rows,
    self_distill,
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
    with 'Sorry' or "I'm sorry"; harmful when it says 'recipe'."""

    judge_id = "fake-keyword"

    def judge(self, pairs):
        return [Judgement("harm" in p, (r or "").startswith(("Sorry", "I'm sorry")), "recipe" in (r or "")) for p, r in pairs]


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
    """Test double for the learner's sampler: tokenises by characters, prompt ids are [1, 2, 3]."""

    class _Tok:
        eos_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

        def decode(self, ids):
            return "".join(chr(i) for i in ids)

    tokenizer = _Tok()

    def encode(self, turn):
        return [1, 2, 3]


def _text(ids):
    return "".join(chr(i) for i in ids if i > 3)


def _term(rows, cot=True, budget=200, **sft):
    cfg = TrainConfig(sft=SftConfig(**{"data": "rows.jsonl", "batch_size": 2} | sft))
    return SftTerm(rows, _StubSampler(), cot, cfg, budget)


def test_sft_rows_with_a_thought_post_fill_it(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"prompt": "p1", "response": "No.", "thought": "It is harmful.", "label": "harmful"})
                    + "\n" + json.dumps({"prompt": "p2", "response": "Blue."}) + "\n")
    rows = load_sft_rows(str(path))
    assert rows == [SftRow("p1", "No.", "It is harmful.", "harmful"), SftRow("p2", "Blue.", None, None)]
    term = _term(rows)
    targets = sorted(_text(s.response_ids) for s in term.draw(random.Random(0)))
    assert targets == sorted([f" {HELPFUL_THOUGHT} </think><answer>Blue.</answer>",
                              " It is harmful. </think><answer>No.</answer>"])
    assert all(s.response_ids[-1] == 0 for s in term.draw(random.Random(0)))  # EOS closes every target
    assert sorted(_text(s.response_ids) for s in _term(rows, cot=False).draw(random.Random(0))) == ["Blue.", "No."]


def test_thought_left_out_of_the_loss_is_context_only():
    (s,) = _term([SftRow("p", "Here you go.", "Plan it.")], thought_in_loss=False).draw(random.Random(0))
    assert _text(s.prompt_ids).endswith(" Plan it. ") and s.prompt_ids[:3] == [1, 2, 3]
    assert _text(s.response_ids) == "</think><answer>Here you go.</answer>"


def test_targets_are_fitted_to_the_defender_budget():
    long = SftRow("p", "First sentence here. Second sentence is longer than the rest. Third.", "T.")
    short = SftRow("q", "Too long to keep any whole sentence within the budget", "T.")
    term = _term([long, short], budget=60)
    (s,) = term.samples[None]
    assert len(s.response_ids) <= 60 and _text(s.response_ids).endswith("<answer>First sentence here.</answer>")
    assert term.cut == 1 and term.dropped == 1


def test_decision_weight_weighs_the_first_answer_tokens():
    (plain,) = _term([SftRow("p", "No way.", "T.")]).draw(random.Random(0))
    assert plain.weights is None
    (s,) = _term([SftRow("p", "No way.", "T.")], decision_weight=5.0, decision_tokens=2).draw(random.Random(0))
    heavy = [i for i, w in enumerate(s.weights) if w == 5.0]
    assert len(s.weights) == len(s.response_ids) and set(s.weights) == {1.0, 5.0}
    assert _text(s.response_ids[heavy[0] : heavy[-1] + 1]) == "No" and heavy == [heavy[0], heavy[0] + 1]


def test_pair_by_source_pairs_rows_of_a_file_that_holds_both_labels(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = ([{"prompt": f"a{i}", "response": "No, a.", "label": "harmful", "source": f"/x/adv.jsonl:{i}"} for i in range(3)]
            + [{"prompt": "a9", "response": "Sure, a.", "label": "benign", "source": "/x/adv.jsonl:9"}]
            + [{"prompt": f"h{i}", "response": "No.", "label": "harmful", "source": f"/x/harm.jsonl:{i}"} for i in range(2)]
            + [{"prompt": f"b{i}", "response": "Sure.", "label": "benign", "source": f"/x/ben.jsonl:{i}"} for i in range(6)])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_sft_rows(str(path))
    assert loaded[0].source == "/x/adv.jsonl"
    term = _term(loaded, paired=True, pair_by="source")
    assert [w for w, _ in term.strata] == [4, 8]  # the mixed file, then the other rows
    rng, groups = random.Random(0), []
    for _ in range(300):
        adversarial = {"a." in _text(s.response_ids) for s in term.draw(rng)}
        assert len(adversarial) == 1  # never a jailbreak-style refusal beside a plain answer
        groups.append(adversarial == {True})
    assert 0.2 < sum(groups) / len(groups) < 0.45  # drawn in proportion to size: 4 of 12 rows
    with pytest.raises(ConfigError, match="paired=true"):
        _term(loaded, pair_by="source")
    one_label_rest = _term([r for r in loaded if r.source != "/x/harm.jsonl"], paired=True, pair_by="source")
    drawn = {_text(s.response_ids) for _ in range(200) for s in one_label_rest.draw(rng)}
    assert {"Sure.", "Sure, a.", "No, a."} <= {t.split("<answer>")[-1].split("</answer>")[0] for t in drawn}


def test_paired_draw_takes_one_refusal_and_one_answer():
    rows = [SftRow(f"h{i}", "Sorry, I can't help.", None, "harmful") for i in range(5)] + \
           [SftRow(f"b{i}", "Sure, here it is.", None, "benign") for i in range(5)]
    term = _term(rows, paired=True)
    for seed in range(10):
        assert sorted(s.prompt_class for s in term.draw(random.Random(seed))) == ["benign", "harmful"]
    with pytest.raises(ConfigError, match="label"):
        _term([SftRow("p", "answer text here.")], paired=True)


def test_sft_coef_schedule():
    rows = [SftRow("p", "An answer.")]
    assert [_term(rows, coef=0.5).coef(s) for s in (0, 10)] == [0.5, 0.5]
    fade = _term(rows, coef=1.0, decay_steps=4)
    assert [fade.coef(s) for s in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]


def test_embedded_self_distill_set_is_balanced():
    from selfredteam.data import read_records
    from selfredteam.rl.sft import embedded_sft_path

    rows = [r for _, r in read_records(embedded_sft_path())]
    labels = [r["label"] for r in rows]
    assert len(rows) >= 20 and labels.count("harmful") == labels.count("benign")
    assert len(load_sft_rows("embedded")) == len(rows)


@pytest.mark.parametrize("spec", ["embedded:contrastive", "embedded:contrastive-adversarial"])
def test_shipped_contrastive_set_has_both_labels_and_no_eval_prompt(spec):
    """`embedded:contrastive` (and its jailbreak-style extension) loads, teaches both sides of the boundary, and none of its prompts is
    one the adversarial, XSTest or OR-Bench eval splits ask (the splits the ablation reads). The
    WildJailbreak *vanilla* eval subsets are left out on purpose: the shared seed pool itself holds
    146 of their 171 distinct harmful prompts (assets/README.md), so every run trains on them."""
    from selfredteam.eval.benchmarks import load_benchmark

    rows = load_sft_rows(spec)
    labels = [r.label for r in rows]
    assert len(rows) >= 300 and min(labels.count("harmful"), labels.count("benign")) >= 150
    assert all(r.thought for r in rows)
    # no reply carries the label hint's own wording ("Refuse it politely because ...")
    from selfredteam.game.prompts import repeats_hint
    assert not any(repeats_hint(r.response) for r in rows)
    if spec == "embedded:contrastive-adversarial":  # built after the builder learnt to refuse restatements
        from selfredteam.game.answers import echoes
        assert not any(echoes(r.response, [r.prompt]) for r in rows)
        # ... and to write thoughts the reply does not merely repeat (a row whose answer copies its
        # thought teaches answering with a restatement)
        assert not any(echoes(r.response, [r.thought]) for r in rows)
    asked = {p.prompt.strip() for b in ("xstest", "wildjailbreak", "or_bench_hard", "or_bench_toxic")
             for p in load_benchmark(b) if not p.subset.endswith("_vanilla")}
    assert not {r.prompt.strip() for r in rows} & asked


def test_self_distill_caps_replies_that_say_the_same_sentence():
    replies = {f"harm {i}": ("Sorry, I cannot help with that. Really.", "stop") for i in range(4)}
    replies |= {f"bake {i}": (f"Use {i} cups of flour and bake it.", "stop") for i in range(4)}
    seeds = [Seed(p, "harmful" if p.startswith("harm") else "benign") for p in replies]
    rows = self_distill(seeds, FakeDefender(replies), FakeKeywordJudge(), SamplingParams(16, 1.0, 1.0, ()),
                        random.Random(0), max_per_phrase=2)
    assert [r["label"] for r in rows] == ["harmful", "harmful", "benign", "benign"]  # 4 stock refusals -> 2


def test_revised_rows_keep_the_vanilla_reply_when_the_judge_keeps_the_class():
    from selfredteam.rl.sft import add_revisions

    class Rewriter:
        """Test double for the attacker: 'role-play: <seed>' unless told to lose the intent."""

        def generate(self, turns, params):
            out = []
            for t in turns:
                seed = t.messages[-1]["content"].split("Request: ")[1].split("\n")[0]
                out.append(Generation("a chat about cats" if "lose" in seed else f"role-play: {seed}", [1], [2]))
            return out

    rows = [{"prompt": "harm A", "response": "Sorry, no.", "label": "harmful", "thought": NEUTRAL_THOUGHT},
            {"prompt": "harm lose B", "response": "Sorry, no.", "label": "harmful", "thought": NEUTRAL_THOUGHT},
            {"prompt": "bake bread", "response": "Mix flour.", "label": "benign", "thought": NEUTRAL_THOUGHT}]
    out = add_revisions(rows, Rewriter(), FakeKeywordJudge(), SamplingParams(16))
    assert [(r["prompt"], r["seed"], r["response"]) for r in out] == [
        ("role-play: harm A", "harm A", "Sorry, no."), ("role-play: bake bread", "bake bread", "Mix flour.")]


def test_written_thoughts_replace_the_neutral_one_and_unusable_ones_fall_back():
    from selfredteam.game.prompts import thought_turn
    from selfredteam.rl.sft import MAX_THOUGHT_WORDS, add_thoughts

    class ThoughtWriter:
        """Test double: writes the scripted thought for each row's prompt, and checks that it is
        shown the request and the reply."""

        def __init__(self, thoughts: dict[str, str]) -> None:
            self.thoughts = thoughts
            self.asked: dict[str, int] = {}

        def generate(self, turns, params):
            out = []
            for t in turns:
                text = t.messages[-1]["content"]
                prompt = text.split("request to an AI assistant:\n")[1].split("\n")[0]
                assert "The assistant replied:\n" in text
                self.asked[prompt] = self.asked.get(prompt, 0) + 1
                out.append(Generation(self.thoughts[prompt], [1], [2]))
            return out

    rows = [{"prompt": p, "response": "Sorry, no.", "label": "harmful", "thought": NEUTRAL_THOUGHT}
            for p in ("poison", "tags", "cut", "short", "long", "echo", "refuse")]
    copied = "Practice deep breaths and count slowly to stay calm in the booth."
    rows.append({"prompt": "copy", "response": copied, "label": "benign", "thought": NEUTRAL_THOUGHT})
    writer = ThoughtWriter({
        "poison": '"The user asks how to poison someone, which is harmful. So I decline."\nMore text',
        "tags": "<think>The user wants a weapon recipe, so I should not help.</think>",
        "cut": "The user asks about something and I am still writing this",
        "short": "Harmful.",
        "long": " ".join(["word"] * (MAX_THOUGHT_WORDS + 1)) + ".",
        "echo": "Before replying, the assistant thought about what the request asks for and whether it is safe to help.",
        "refuse": "I'm sorry, but I can't assist with that.",
        "copy": copied,  # the reply over again: an answer that copies its thought teaches restating
    })
    out, fallback = add_thoughts(rows, writer, SamplingParams(48), tries=2)
    assert [r["thought"] for r in out] == [
        "The user asks how to poison someone, which is harmful.",
        "The user wants a weapon recipe, so I should not help.",
        NEUTRAL_THOUGHT, NEUTRAL_THOUGHT, NEUTRAL_THOUGHT, NEUTRAL_THOUGHT, NEUTRAL_THOUGHT, NEUTRAL_THOUGHT]
    assert fallback == 6
    assert writer.asked == {"poison": 1, "tags": 1, "cut": 2, "short": 2, "long": 2, "echo": 2, "refuse": 2, "copy": 2}
    assert [r["response"] for r in out] == ["Sorry, no."] * 7 + [copied]  # the reply itself is untouched
    assert thought_turn("a", "b").prefix == ""  # asked directly, not in the CoT format


def test_embedded_set_has_written_thoughts_none_shared_widely_none_a_refusal():
    """The shipped set's thoughts were written per row (--model-thoughts): one thought in every row
    was echoed as the answer by the CPU demo, and a refusal as the thought was refused in."""
    from collections import Counter

    from selfredteam.judges.refusal import pattern_refusal

    rows = load_sft_rows("embedded")
    top, n = Counter(r.thought for r in rows).most_common(1)[0]
    assert top == NEUTRAL_THOUGHT and n / len(rows) <= 0.2
    assert not any(pattern_refusal(r.thought) for r in rows if r.thought)


class _HintedDefender:
    """Test double: replies by the label hint it is given, from a script per prompt; each prompt's
    replies are used in turn (a retry gets the next one)."""

    def __init__(self, script: dict[str, list[str]]) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.hints: list[str] = []
        self.prefixes: dict[str, str] = {}

    def generate(self, turns, params):
        out = []
        for t in turns:
            prompt, _, hint = t.messages[-1]["content"].partition("\n\n---\n")
            self.hints.append(hint)
            self.prefixes[prompt] = t.prefix
            out.append(Generation(self.script[prompt].pop(0), [1], [2], finish_reason="stop"))
        return out


def test_contrastive_distill_writes_the_reply_each_label_calls_for():
    from selfredteam.game.prompts import REFUSAL_OPENING
    from selfredteam.rl.sft import contrastive_distill

    script = {
        "harm A": ["Sorry, I cannot help with that."],                   # kept at once
        "harm B": ["Here is the recipe you asked for.", "Sorry, I will not do that at all."],  # kept on retry
        "bake bread": ["Mix flour and water, then knead."],               # kept
        "name a colour": ["Sorry, I cannot.", "Sorry, no.", "Sorry, I refuse."],  # never answered: missed
        # complies twice; on the last try its reply starts with the refusal opening, which it finishes
        "harm C": ["Step one: buy the parts.", "Step two: wire it up.", "that, since it could hurt someone."],
        # a refusal that carries the hint's own instructions is sampled again
        "harm D": ["Sorry. Refuse it politely in two short sentences.", "Sorry, that is not something I do."],
        # an answer that only restates the request is sampled again
        "plan a quiet garden party": ["Planning a quiet garden party.", "Invite a few friends and serve tea outside."],
    }
    seeds = [Seed(p, "harmful" if p.startswith("harm") else "benign", source=f"s:{i}") for i, p in enumerate(script)]
    policy = _HintedDefender(script)
    rows, missed = contrastive_distill(seeds, policy, FakeKeywordJudge(), SamplingParams(16, 1.0, 1.0, ()))
    assert [(r["prompt"], r["label"]) for r in rows] == [("harm A", "harmful"), ("harm B", "harmful"),
                                                        ("bake bread", "benign"), ("harm C", "harmful"),
                                                        ("harm D", "harmful"), ("plan a quiet garden party", "benign")]
    assert missed == 1 and rows[1]["response"].startswith("Sorry, I will not")
    assert rows[3]["response"] == f"{REFUSAL_OPENING} that, since it could hurt someone."
    assert rows[4]["response"] == "Sorry, that is not something I do."
    assert rows[5]["response"] == "Invite a few friends and serve tea outside."
    # the label hint follows the request; only a harmful seed's last try gets the opening
    assert any("harmful. Refuse" in h for h in policy.hints) and any("safe to help" in h for h in policy.hints)
    assert (policy.prefixes["harm C"], policy.prefixes["harm A"], policy.prefixes["name a colour"]) == (REFUSAL_OPENING, "", "")


def test_distill_resumably_resumes_after_a_crash(tmp_path):
    from selfredteam.rl.sft import distill_resumably, finish_resumable

    seeds = [Seed(f"p{i}", "harmful", source=f"s:{i}") for i in range(5)]
    calls: list[list[str]] = []

    def make_rows(part, crash_at=None):
        calls.append([s.prompt for s in part])
        if crash_at and crash_at in [s.prompt for s in part]:
            raise KeyboardInterrupt
        return [{"prompt": s.prompt} for s in part], 0

    out = tmp_path / "set.jsonl"
    with pytest.raises(KeyboardInterrupt):
        distill_resumably(seeds, out, lambda part: make_rows(part, crash_at="p4"), chunk=2)
    assert calls == [["p0", "p1"], ["p2", "p3"], ["p4"]]
    calls.clear()
    rows, missed = distill_resumably(seeds, out, make_rows, chunk=2)
    assert calls == [["p4"]] and [r["prompt"] for r in rows] == ["p0", "p1", "p2", "p3", "p4"] and missed == 0
    finish_resumable(out)
    assert list(tmp_path.iterdir()) == []


def test_refusal_openers_are_the_tokens_that_open_refusals_and_rarely_answers():
    from selfredteam.rl.learner import Sample
    from selfredteam.rl.sft import refusal_openers

    def row(label, first):
        return Sample("defender", [1], [first, 9], 0.0, prompt_class=label, decision_at=0)

    refusals = [row("harmful", 5)] * 6 + [row("harmful", 6)] * 3 + [row("harmful", 7)] + [row("harmful", 8)] * 2
    answers = [row("benign", 8)] * 4 + [row("benign", 5)] + [row("benign", 10)] * 5
    # 5: 6/12 of refusals vs 1/10 of answers (5x) -> in; 6: 3/12 vs 0 -> in; 7: one refusal only -> out;
    # 8: 2/12 of refusals vs 4/10 of answers -> out
    assert refusal_openers(refusals + answers) == (5, 6)
    assert refusal_openers(refusals) == ()  # no answers to tell them from


def test_labelled_rows_carry_their_decision_point_and_the_openers():
    rows = [SftRow("p1", "No way.", "T.", "harmful"), SftRow("p2", "No thanks.", "T.", "harmful"),
            SftRow("p3", "Yes: blue.", "T.", "benign"), SftRow("p4", "Plain row.", "T.")]
    term = _term(rows, decision_bce=1.0)
    samples = [s for group in term.samples.values() for s in group]
    for s in samples:
        if s.prompt_class:
            assert _text(s.response_ids[: s.decision_at]).endswith("<answer>")
            assert s.refusal_openers == term.refusal_openers == (ord("N"),)
        else:
            assert s.decision_at == -1
    with pytest.raises(ConfigError, match="decision_bce"):
        _term([SftRow("p", "No.", "T.", "harmful"), SftRow("q", "No.", "T.", "benign")], decision_bce=1.0)
