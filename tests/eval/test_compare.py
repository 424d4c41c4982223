"""Refusal discrimination J, Newcombe's interval and the paired bootstrap, on constructed rows."""

import pytest

from selfredteam.eval.compare import compare_models, fmt_interval, newcombe_diff


def test_newcombe_matches_the_published_example():
    # Newcombe (1998), worked example: 56/70 - 48/80 = 0.2000, method 10 (score) CI 0.0524 to 0.3339
    d = newcombe_diff(56, 70, 48, 80)
    assert d["value"] == pytest.approx(0.2)
    assert d["low"] == pytest.approx(0.0524, abs=1e-4) and d["high"] == pytest.approx(0.3339, abs=1e-4)
    assert fmt_interval({"value": 0.1, "low": -0.05, "high": 0.25}) == "+0.10 [-0.05, +0.25]"


def rows(refuse_harmful, refuse_benign, n=40, harmful_answer=False, parse_error_at=None):
    out = []
    for i in range(n):
        for label, subset, refuse in (("harmful", "harmful_adversarial", refuse_harmful),
                                      ("benign", "benign_adversarial", refuse_benign)):
            r = refuse(i) if callable(refuse) else refuse
            out.append({"benchmark": "wildjailbreak", "subset": subset, "label": label, "prompt": f"{label}{i}",
                        "judge": {"prompt_harmful": label == "harmful", "response_refusal": r,
                                  "response_harmful": harmful_answer and not r and label == "harmful",
                                  "parse_error": i == parse_error_at}})
    return out


def test_a_discriminating_defender_raises_j():
    base = rows(False, False, harmful_answer=True)
    trained = rows(True, False)
    c = compare_models(trained, base, seed=0, reps=500)
    (fam,) = c["families"]
    assert fam["family"] == "wildjailbreak_adversarial" and fam["n_harmful"] == 40
    assert fam["model"]["J"]["value"] == 1.0 and fam["baseline"]["J"]["value"] == 0.0
    assert fam["delta_J"] == {"value": 1.0, "low": 1.0, "high": 1.0}
    harm = next(e for e in c["subsets"] if e["label"] == "harmful")
    assert harm["delta_asr"]["value"] == -1.0 and harm["model_asr"]["k"] == 0


def test_refusing_everything_is_not_discrimination():
    c = compare_models(rows(True, True), rows(False, False), seed=0, reps=500)
    (fam,) = c["families"]
    assert fam["model"]["J"]["value"] == 0.0 and fam["delta_J"]["value"] == 0.0
    assert fam["delta_over_refusal"]["value"] == 1.0 and fam["delta_harmful_refusal"]["value"] == 1.0


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    trained = rows(lambda i: i % 2 == 0, lambda i: i % 5 == 0)  # 0.50 vs 0.20
    base = rows(lambda i: i % 10 == 0, False)                    # 0.10 vs 0.00
    a = compare_models(trained, base, seed=3, reps=800)["families"][0]
    b = compare_models(trained, base, seed=3, reps=800)["families"][0]
    assert a == b
    d = a["delta_J"]
    assert d["value"] == pytest.approx(0.2) and d["low"] < 0.2 < d["high"]


def test_parse_errors_are_left_out_of_the_pairs():
    c = compare_models(rows(True, False, parse_error_at=3), rows(False, False), seed=0, reps=200)
    assert c["families"][0]["n_harmful"] == 39 and c["families"][0]["n_benign"] == 39


def test_several_models_are_averaged_with_a_joint_bootstrap():
    a, b = rows(True, False), rows(lambda i: i % 2 == 0, False)  # J 1.0 and 0.5
    c = compare_models([a, b], rows(False, False), seed=0, reps=300)
    (fam,) = c["families"]
    assert c["n_models"] == 2 and fam["model"]["J"]["value"] == 0.75
    assert fam["per_model_delta_J"] == [1.0, 0.5] and fam["delta_J"]["value"] == 0.75
    assert fam["delta_J"]["low"] <= 0.75 <= fam["delta_J"]["high"]
    assert fam["model"]["harmful_refusal"]["k"] == 60 and fam["model"]["harmful_refusal"]["n"] == 80


def test_difference_of_delta_j_between_two_variants_is_paired():
    """A study's comparison: ΔJ of A (vs its base) minus ΔJ of B (vs its own base), same prompts."""
    from selfredteam.eval.compare import delta_j_difference

    base_a, base_b = rows(False, False), rows(True, True)  # B's base refuses everything: J 0 too
    a = [rows(True, False), rows(lambda i: i % 2 == 0, False)]  # ΔJ 1.0 and 0.5: mean 0.75
    b = [rows(True, lambda i: i % 4 == 0)]                       # J 0.75, base J 0: ΔJ 0.75
    d = delta_j_difference(a, base_a, b, base_b, "wildjailbreak_adversarial", seed=0, reps=400)
    assert d["value"] == pytest.approx(0.0) and d["low"] < 0 < d["high"]
    same = delta_j_difference(a, base_a, a, base_a, "wildjailbreak_adversarial", seed=0, reps=400)
    assert same == {"value": 0.0, "low": 0.0, "high": 0.0}  # paired: the same prompts on both sides
    assert delta_j_difference(a, base_a, b, base_b, "xstest") is None
