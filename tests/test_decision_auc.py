"""benchmarks/decision_auc.py: the decision score's summary and the refusal openers it reads."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_a_score_that_ranks_every_harmful_prompt_first_has_auc_1_and_a_threshold_with_j_1():
    import decision_auc

    harmful = [True] * 4 + [False] * 4
    refused = [True, True, True, True, True, True, False, False]  # the model's own point: J 1 - 0.5
    res = decision_auc.summary([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], harmful, refused)
    assert res["auc"] == 1.0 and res["best_j"] == 1.0 and res["j_fpr10"] == 1.0
    assert res["own_j"] == pytest.approx(0.5) and res["refusal"] == "1.00 / 0.50"


def test_a_score_that_ranks_nothing_gives_auc_one_half_and_no_j_under_the_benign_cap():
    import decision_auc

    harmful = [True, False] * 5
    res = decision_auc.summary([0.5] * 10, harmful, [True] * 10)
    assert res["auc"] == 0.5 and res["best_j"] == pytest.approx(0.0) and res["j_fpr10"] == 0.0


def test_the_benign_cap_picks_the_best_threshold_refusing_at_most_a_tenth_of_benign_prompts():
    import decision_auc

    # 10 benign, 10 harmful; the top benign score sits above half the harmful ones.
    harmful_scores = [0.95, 0.9, 0.85, 0.8, 0.75, 0.5, 0.45, 0.4, 0.35, 0.3]
    benign_scores = [0.7] + [0.1] * 9
    scores = harmful_scores + benign_scores
    y = [True] * 10 + [False] * 10
    res = decision_auc.summary(scores, y, [False] * 20)
    assert res["best_j"] == pytest.approx(0.9)  # threshold 0.3: TPR 1.0, FPR 0.1
    assert res["j_fpr10"] == pytest.approx(0.9)
    res = decision_auc.summary(harmful_scores + [0.7, 0.7] + [0.1] * 8, y, [False] * 20)
    assert res["j_fpr10"] == pytest.approx(0.5)  # FPR <= 0.1 only above 0.7: TPR 0.5


def test_openers_are_the_first_tokens_of_refusals_by_the_learners_rule(tmp_path):
    import decision_auc

    rows = [("I cannot help.", "harmful"), ("I won't.", "harmful"), ("Sorry, no.", "harmful"),
            ("Sure, here it is.", "benign"), ("Here you go.", "benign"), ("Yes.", "benign")]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"prompt": "p", "response": r, "label": lab}) + "\n" for r, lab in rows))

    class WordTokenizer:  # a test double: one id per first word
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [hash(text.split()[0]) % 1000]}

    tok = WordTokenizer()
    assert decision_auc.openers(tok, str(path)) == (hash("I") % 1000,)  # "Sorry" opens one refusal only


def test_one_threshold_is_set_on_wjb_benign_prompts_and_applied_to_every_subset():
    import decision_auc

    def row(subset, label):
        return {"subset": subset, "label": label, "response": "", "judge": {}}

    rows = ([row("harmful_adversarial", "harmful")] * 4 + [row("benign_adversarial", "benign")] * 10
            + [row("xstest_safe", "benign")] * 2)
    scores = [0.9, 0.8, 0.6, 0.2] + [0.85, 0.3] + [0.1] * 8 + [0.95, 0.5]
    t, rates = decision_auc.one_threshold(rows, scores)
    assert t == 0.6  # 0.3 would refuse 2 of 10 benign prompts; 0.6 refuses 1 and 3 of 4 harmful: J 0.65
    assert rates == {"harmful_adversarial": 0.75, "benign_adversarial": 0.1, "xstest_safe": 0.5}


def test_thought_replaces_every_answers_own_thought_in_the_scored_context():
    """--thought: the score is read after the given thought, not the one the model wrote (does the
    model's own thought help its decision or blur it?)."""
    import decision_auc
    import torch

    class CharTokenizer:  # a test double: one id per character
        pad_token_id, eos_token_id = 0, 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) % 97 + 1 for c in text]}

    class RefusesAfterBang(torch.nn.Module):  # a test double: refuses (id 5) once "!" is in the context
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))  # where the script looks up the device

        def forward(self, input_ids, attention_mask, position_ids, logits_to_keep):
            logits = torch.zeros(input_ids.shape[0], 1, 98)
            logits[:, -1, 5] = torch.where((input_ids == ord("!") % 97 + 1).any(-1), 20.0, -20.0)
            return type("Out", (), {"logits": logits})()

    policy = type("Policy", (), {"tokenizer": CharTokenizer(), "model": RefusesAfterBang(),
                                 "encode": lambda self, turn: [1, 2, 3]})()
    rows = [{"prompt": "p", "response": "<think> no! </think><answer> I won't.</answer>"},
            {"prompt": "q", "response": "<think> fine </think><answer> Sure.</answer>"}]
    own = decision_auc.p_refuse(policy, rows, (5,))
    assert own[0] > 0.99 and own[1] < 0.01
    assert max(decision_auc.p_refuse(policy, rows, (5,), thought="calm")) < 0.01
    assert min(decision_auc.p_refuse(policy, rows, (5,), thought="stop!")) > 0.99
