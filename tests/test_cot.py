"""Every hidden-CoT rule from method.md, one case each."""

import pytest

from selfredteam.game.cot import COT_PRIMER, check_cot, extract_answer, parse_cot, parse_direct

VALID = "The user wants X. </think><answer>Here is X.</answer>"


def test_primer_opens_think():
    assert COT_PRIMER.startswith("Let's think step by step") and COT_PRIMER.endswith("<think>")


def test_valid_format():
    p = parse_cot(VALID)
    assert p.valid and p.answer == "Here is X." and p.thought == "The user wants X."


def test_whitespace_between_think_and_answer_and_trailing_is_ok():
    assert check_cot("reason </think>\n\n<answer> ok </answer>\n") is None


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("reason <answer>a</answer>", "exactly one"),  # no </think>
        ("r </think> r2 </think><answer>a</answer>", "exactly one"),  # two </think>
        ("r </think>text<answer>a</answer>", "immediately"),  # text between
        ("r </think><answer>a</answer> trailing", "end with"),  # does not end with </answer>
        ("r <think> again </think><answer>a</answer>", "second <think>"),
        ("   </think><answer>a</answer>", "empty thinking"),
        ("r </think><answer>   </answer>", "empty answer"),
        ("r </think><answer>a</answer><answer>b</answer>", "exactly one <answer>"),
        ("r </think><answer>a", "end with"),  # unterminated answer
    ],
)
def test_each_violation(text, rule):
    reason = check_cot(text)
    assert reason is not None and rule in reason
    assert not parse_cot(text).valid


def test_extraction_falls_back_sensibly():
    assert extract_answer("r </think>text<answer>a</answer>") == "a"
    assert extract_answer("r </think><answer>half") == "half"
    assert extract_answer("r </think> just text") == "just text"
    assert extract_answer("no tags at all") == "no tags at all"


def test_direct_mode_has_no_violation():
    p = parse_direct("  an answer <think> whatever ")
    assert p.valid and p.answer == "an answer <think> whatever"
