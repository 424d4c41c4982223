"""Wilson intervals, SBERT similarity and Self-BLEU on tiny hand-checked inputs."""

import numpy as np
import pytest

from selfredteam.eval.metrics import sbert_similarity, self_bleu, wilson


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
