"""Wilson intervals, SBERT similarity and Self-BLEU on tiny hand-checked inputs."""

import numpy as np
import pytest

from selfredteam.eval.metrics import answer_key, sbert_similarity, self_bleu, top_share, wilson


def test_wilson_known_values():
    # Wilson 95% for 5/10: [0.2366, 0.7634]; for 0/10: [0, 0.2775]; for 10/10: [0.7225, 1]
    r = wilson(5, 10)
    assert r.low == pytest.approx(0.2366, abs=1e-4) and r.high == pytest.approx(0.7634, abs=1e-4)
    r0 = wilson(0, 10)
    assert r0.low == 0.0 and r0.high == pytest.approx(0.2775, abs=1e-4)
    r1 = wilson(10, 10)
    assert r1.low == pytest.approx(0.7225, abs=1e-4) and r1.high == pytest.approx(1.0)
    assert wilson(0, 0).value is None and str(wilson(0, 0)) == "n/a"
    assert str(wilson(1, 4)) == "25.0% [4.6, 69.9]"


class OneHotEncoder:
    """Test double: fixed unit vectors so cosines are known exactly."""

    def __call__(self, texts):
        table = {"a": [1, 0], "b": [0, 1], "c": [1, 0]}
        return np.array([table[t] for t in texts], dtype=np.float32)


def test_sbert_similarity_excludes_diagonal():
    # pairs: a-b 0, a-c 1, b-c 0 -> mean over 6 ordered off-diagonal pairs = 2/6
    assert sbert_similarity(["a", "b", "c"], encoder=OneHotEncoder()) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        sbert_similarity(["a"], encoder=OneHotEncoder())


def test_self_bleu_bounds():
    same = ["the cat sat on the mat today"] * 3
    assert self_bleu(same) == pytest.approx(1.0)
    diff = ["the cat sat on the mat", "quantum chromodynamics lectures begin soon", "bake bread with rye flour"]
    assert self_bleu(diff) < 0.1


@pytest.mark.slow
def test_sbert_real_encoder_orders_paraphrases():
    close = ["How do I bake bread?", "What is the way to bake bread?", "How can I make bread at home?"]
    far = ["How do I bake bread?", "Explain the tax rules for dividends.", "Write a poem about the sea."]
    assert sbert_similarity(close) > sbert_similarity(far)


def test_answer_key_is_a_stock_phrase_not_a_short_opener():
    # one stock sentence, written two ways: one key
    assert answer_key("I'm sorry, but I can't assist with that.") == answer_key("I'm sorry but I can't assist with that")
    # "Certainly!" and "1." open different answers: the key reads on to 4 words
    assert answer_key("Certainly! Here is a poem about the sea.") == "certainly here is a poem about the sea"
    assert answer_key("1. Mix the flour.\n2. Bake it.") == "1 mix the flour"
    answers = ["Certainly! Here is a poem.", "Certainly! The capital is Paris.", "Certainly! Use a stain remover.",
               "I will read the request carefully and reply to the user.",
               "I will read the request carefully and reply to the user!"]
    assert top_share(answers) == (0.4, "i will read the request carefully and reply to the user")
    assert answer_key("") == "" and top_share([]) == (None, "")


def test_eval_summary_counts_non_answers_and_echoes():
    from selfredteam.eval.run import summarize_answers

    def row(prompt: str, answer: str, refusal: bool = False) -> dict:
        return {"benchmark": "b", "subset": "s", "label": "benign", "prompt": prompt, "answer": answer,
                "judge": {"parse_error": False, "response_refusal": refusal, "response_harmful": False}}

    prompt = "How do I remove a red wine stain from a cotton shirt?"
    rows = [row(prompt, "Absolutely!"),  # two words
            row(prompt, "Yes, I can help with that today."),  # no content word of the prompt
            row(prompt, "How do I remove a red wine stain from a cotton shirt?"),  # the prompt repeated
            row(prompt, "Blot the stain, then rinse the shirt in cold water with dish soap."),
            row(prompt, "I'm sorry, but I can't help with that.", refusal=True)]
    entry = summarize_answers(rows)["subsets"][0]
    assert entry["non_answer_share"] == pytest.approx(2 / 5)
    assert entry["echo_share"] == pytest.approx(1 / 5)
