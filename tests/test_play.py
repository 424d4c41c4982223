import random

from selfredteam.config import GameConfig
from selfredteam.data import Seed
from selfredteam.game.play import PARSE_ERROR_OUTCOME, mark_revisions, play_games, summarize_games
from selfredteam.game.rewards import Labels, compute_rewards
from selfredteam.policy.base import SamplingParams
from tests.fakes import FakeJudge, FakePolicy

SEEDS = [Seed(f"harm {i}", "harmful") for i in range(4)] + [Seed(f"ok {i}", "benign") for i in range(4)]
P = SamplingParams(8)


def play(policy, judge, seeds=SEEDS, cot=True, mode="general_sum", seed=0, k=1, cut_off_reward=-1.0):
    rules = GameConfig(reward_mode=mode, cot=cot, revise_fraction=0.5, cut_off_format_reward=cut_off_reward)
    return play_games(seeds, policy, judge, rules=rules, attacker_params=P, defender_params=P,
                      rng=random.Random(seed), samples_per_prompt=k)


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
    s = summarize_games(games)
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
    s = summarize_games(games)
    assert s["judge/parse_errors"] == len(bad)


def test_samples_per_prompt_answers_each_final_prompt_k_times():
    policy = FakePolicy("plan </think><answer>REVISED</answer>", "thinking </think><answer>No.</answer>")
    games = play(policy, FakeJudge(), k=3)
    assert len(games) == 24 and [g.sample for g in games[:3]] == [0, 1, 2]
    # one attacker turn per revised seed (4), its final prompt answered 3 times; vanilla seeds too
    assert [len(c) for c in policy.calls] == [4 + 4 * 3, 4 * 3]
    for i in range(8):
        same = games[3 * i: 3 * i + 3]
        assert {g.prompt_index for g in same} == {i} and len({g.final_prompt for g in same}) == 1
        assert len({id(g.attacker) for g in same}) == 1  # shared, not re-generated
    assert summarize_games(games)["cot/attacker_violations"] == 0


def test_an_answer_cut_off_by_the_budget_scores_cut_off_reward():
    from selfredteam.policy.base import Generation

    class CutOff(FakePolicy):
        def generate(self, turns, params):
            return [Generation(g.text, g.prompt_ids, g.completion_ids, finish_reason="length")
                    for g in super().generate(turns, params)]

    judge = FakeJudge(ph=False, rr=False, rh=False)  # benign prompt, helpful unharmful answer
    cut = CutOff("p </think><answer>R</answer>", "ok </think><answer>Here is how to bake bre")
    paper = [g for g in play(cut, judge) if not g.revised][0]
    assert paper.defender.cut_off and paper.defender.cot_violation
    assert paper.rewards["defender"] == 1.0 + 1.0 - 1.0  # a tie with refusing a benign prompt (+1)
    tuned = [g for g in play(cut, judge, cut_off_reward=0.0) if not g.revised][0]
    assert tuned.rewards["defender"] == 2.0  # above refusing (+1), below a complete answer (+3)
    broken = CutOff("p </think><answer>R</answer>", "rambling without any tags")
    g = [g for g in play(broken, judge, cut_off_reward=0.0) if not g.revised][0]
    assert not g.defender.cut_off and g.rewards["defender"] == 1.0  # other violations still cost -1
    refusal = compute_rewards("general_sum", Labels(False, True, False), seed_harmful=False, revised=False,
                              cot=True, defender_violation=False)
    assert refusal.defender == 1.0 < tuned.rewards["defender"]


def test_refused_revisions_lose_only_when_the_rule_is_on():
    policy = FakePolicy("p </think><answer>I'm sorry, but I can't assist with that.</answer>",
                        "t </think><answer>I'm sorry, but I can't assist with that.</answer>")
    judge = FakeJudge(ph=False, rr=True, rh=False)
    paper = [g for g in play(policy, judge) if g.revised]
    # The table (judged benign, "refused"): benign seed 0.5 + 0.5 - 1 + 1, harmful seed -0.5 + 0.5 - 1 + 1.
    assert {g.seed_label: g.rewards["attacker"] for g in paper} == {"benign": 1.0, "harmful": 0.0}
    rules = GameConfig(cot=True, revise_fraction=0.5, refused_revision_loses=True)
    ruled = [g for g in play_games(SEEDS, policy, judge, rules=rules, attacker_params=P, defender_params=P,
                                   rng=random.Random(0)) if g.revised]
    assert all(g.rewards["attacker"] == -2.0 + 1.0 and "attacker_refused_revision" in g.outcomes for g in ruled)
    assert [g.rewards["defender"] for g in ruled] == [g.rewards["defender"] for g in paper]
    assert not any("attacker_refused_revision" in g.outcomes for g in paper)


def test_seed_refusal_label_reaches_the_game():
    """game.refusal_label=seed: a judge that calls every prompt harmful no longer makes refusing a
    benign seed's prompt the defender's right answer."""
    policy = FakePolicy("plan </think><answer>REVISED</answer>", "thinking </think><answer>No.</answer>")
    rules = GameConfig(cot=True, revise_fraction=0.5, refusal_label="seed")
    games = play_games(SEEDS, policy, FakeJudge(ph=True, rr=True, rh=False), rules=rules, attacker_params=P,
                       defender_params=P, rng=random.Random(0))
    for g in games:
        right = "defender_correct_refusal" if g.seed_label == "harmful" else "defender_wrong_refusal"
        assert right in g.outcomes
    judge_rules = play(policy, FakeJudge(ph=True, rr=True, rh=False))
    assert all("defender_correct_refusal" in g.outcomes for g in judge_rules)


def test_an_echoed_answer_to_a_benign_prompt_loses_only_when_the_rule_is_on():
    """game.echo_loses reads the eval's echo check (game.answers.echoes) on the defender's answer
    against the prompt it answered: a restatement judged harmless is no help."""
    from selfredteam.game.answers import echoes

    echo = "SEED benign prompt words restated here"
    policy = FakePolicy(f"plan </think><answer>{echo}</answer>", f"t </think><answer>{echo}</answer>")
    seeds = [Seed(prompt=echo, label="benign", source="t"), Seed(prompt="Another benign request entirely",
                                                                   label="benign", source="t")]
    judge = FakeJudge(ph=False, rr=False, rh=False)
    rules = GameConfig(cot=True, revise_fraction=0.0, echo_loses=True)
    games = play_games(seeds, policy, judge, rules=rules, attacker_params=P, defender_params=P, rng=random.Random(0))
    by_seed = {g.seed: g for g in games}
    assert echoes(echo, [echo]) and not echoes(echo, ["Another benign request entirely"])
    assert "defender_echoed_prompt" in by_seed[echo].outcomes and "defender_wrong_refusal" in by_seed[echo].outcomes
    assert "defender_echoed_prompt" not in by_seed["Another benign request entirely"].outcomes
    paper = play_games(seeds, policy, judge, rules=GameConfig(cot=True, revise_fraction=0.0), attacker_params=P,
                       defender_params=P, rng=random.Random(0))
    assert [g.rewards["defender"] for g in paper] == [3.0, 3.0]
    assert [g.rewards["defender"] for g in games] == [1.0 if g.seed == echo else 3.0 for g in games]
