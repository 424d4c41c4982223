import random

from selfredteam.data import Seed
from selfredteam.game.play import PARSE_ERROR_OUTCOME, mark_revisions, play_games, summarize
from selfredteam.game.rewards import Labels, compute_rewards
from selfredteam.policy.base import SamplingParams
from tests.fakes import FakeJudge, FakePolicy

SEEDS = [Seed(f"harm {i}", "harmful") for i in range(4)] + [Seed(f"ok {i}", "benign") for i in range(4)]
P = SamplingParams(8)


def play(policy, judge, seeds=SEEDS, cot=True, mode="general_sum", seed=0):
    return play_games(seeds, policy, judge, reward_mode=mode, cot=cot, revise_fraction=0.5,
                      attacker_params=P, defender_params=P, rng=random.Random(seed))


def test_half_of_each_class_is_revised():
    for s in range(20):
        marks = mark_revisions(SEEDS, 0.5, random.Random(s))
        assert sum(m for m, x in zip(marks, SEEDS) if x.harmful) == 2
        assert sum(m for m, x in zip(marks, SEEDS) if not x.harmful) == 2


def test_marking_is_seeded():
    assert mark_revisions(SEEDS, 0.5, random.Random(3)) == mark_revisions(SEEDS, 0.5, random.Random(3))


def test_game_flow_hidden_cot_and_rewards():
    policy = FakePolicy("plan </think><answer>REVISED</answer>", "thinking </think><answer>No.</answer>")
    judge = FakeJudge(ph=True, rr=True, rh=False)
    games = play(policy, judge)
    # Pass 1: 4 attacker turns + 4 vanilla defender turns; pass 2: 4 revised defender turns.
    assert [len(c) for c in policy.calls] == [8, 4]
    # The judge and the defender only see answers, never the hidden thoughts.
    assert all("plan" not in p and "thinking" not in (r or "") for p, r in judge.seen)
    for g in games:
        assert g.defender.answer == "No." and not g.defender.cot_violation
        expected = compute_rewards("general_sum", Labels(True, True, False), seed_harmful=g.seed_label == "harmful",
                                   revised=g.revised, cot=True, attacker_violation=False if g.revised else None,
                                   defender_violation=False)
        assert g.rewards == {"attacker": expected.attacker, "defender": expected.defender}
        d = g.to_dict()
        for key in ("seed", "seed_label", "revised", "attacker", "defender", "judge", "rewards", "outcomes",
                    "reward_mode", "cot"):
            assert key in d
        assert (d["attacker"] is None) == (not g.revised)
        if g.revised:
            assert g.final_prompt == "REVISED"


def test_cot_violation_costs_and_answer_still_used():
    policy = FakePolicy("no tags here", "also no tags")
    games = play(policy, FakeJudge())
    g = next(g for g in games if g.revised)
    assert g.attacker.cot_violation and g.attacker.answer == "no tags here"
    s = summarize(games)
    assert s["cot/attacker_violations"] == 4 and s["cot/defender_violations"] == 8


def test_no_cot_mode_has_no_primer():
    policy = FakePolicy("plain revision", "plain answer")
    games = play(policy, FakeJudge(), cot=False)
    assert all(t.prefix == "" for call in policy.calls for t in call)
    assert all(not g.defender.cot_violation for g in games)


def test_parse_errors_dropped_and_counted():
    seeds = [Seed("UNPARSEABLE harm", "harmful"), Seed("fine", "benign")]
    games = play(FakePolicy("x </think><answer>UNPARSEABLE y</answer>", "z"), FakeJudge(), seeds=seeds, cot=False)
    bad = [g for g in games if g.judge.parse_error]
    assert bad and all(g.rewards == {"attacker": None, "defender": None} for g in bad)
    assert all(g.outcomes == [PARSE_ERROR_OUTCOME] for g in bad)
    s = summarize(games)
    assert s["judge/parse_errors"] == len(bad)
