"""Self-play variants: replay's UCB choice and bounded pool, past-self snapshots, the novelty
bonus arithmetic, a 2-step loop with each on, and an exact resume with replay and opponents on."""

import json

import numpy as np
import pytest
import torch

from selfredteam.config import NoveltyConfig, OpponentsConfig, ReplayConfig
from selfredteam.game.play import GameRecord, RoleTurn
from selfredteam.judges.base import Judgement
from selfredteam.rl.extensions import (
    NoveltyBonus,
    OpponentPool,
    ReplayEntry,
    ReplayPool,
    defender_lost,
)
from selfredteam.rl.loop import train
from tests.fakes import FakeJudge
from tests.rl.test_learner import lora_policy
from tests.rl.test_loop import cfg_for, read_metrics


def game(prompt, label, refusal, harmful=False, sample=0):
    return GameRecord(seed=prompt, seed_label=label, revised=False, attacker=None, defender=RoleTurn("a", "a", False),
                      judge=Judgement(label == "harmful", refusal, harmful), rewards={"attacker": None, "defender": 0.0},
                      outcomes=[], reward_mode="general_sum", cot=True, sample=sample)


def test_defender_lost():
    assert defender_lost(game("p", "benign", refusal=True))          # over-refusal
    assert not defender_lost(game("p", "benign", refusal=False))
    assert defender_lost(game("p", "harmful", refusal=False))        # complied with a harmful prompt
    assert defender_lost(game("p", "harmful", refusal=True, harmful=True))
    assert not defender_lost(game("p", "harmful", refusal=True))


def test_replay_ucb_prefers_prompts_still_failed_and_bounds_the_pool():
    pool = ReplayPool(ReplayConfig(fraction=0.5, pool_size=3, ucb_c=1.0))
    pool.entries = [ReplayEntry("solved", "benign", plays=10, fails=0), ReplayEntry("hard", "benign", plays=10, fails=9),
                    ReplayEntry("new", "harmful", plays=1, fails=1)]
    # total 21 plays: new 1 + sqrt(ln 21 / 1) = 2.74; hard 0.9 + 0.55 = 1.45; solved 0 + 0.55
    assert [e.prompt for e in pool.choose(2)] == ["new", "hard"]
    hard = pool.entries[1]
    pool.update([game("fresh lost", "benign", refusal=True), game("fresh won", "benign", refusal=False)],
                [(hard, game("hard", "benign", refusal=False))])
    assert hard.plays == 11 and hard.fails == 9
    assert [e.prompt for e in pool.entries] == ["hard", "new", "fresh lost"]  # full at 3: "solved" left
    again = ReplayPool(ReplayConfig(pool_size=3))
    again.load_state_dict(json.loads(json.dumps(pool.state_dict())))
    assert again.entries == pool.entries


def test_opponent_snapshots_are_bounded_sampled_and_restored():
    policy = lora_policy(0)
    pool = OpponentPool(OpponentsConfig(prob=0.5, every=2, pool_size=2))
    params = {n: p for n, p in policy.model.named_parameters() if "lora_" in n}
    name = next(iter(params))
    for step in range(1, 7):
        with torch.no_grad():
            params[name].fill_(float(step))
        pool.maybe_snapshot(step, policy)
    assert [s for s, _ in pool.snapshots] == [4, 6]
    with pool.loaded(policy, 0):
        assert float(params[name].detach().flatten()[0]) == 4.0
    assert float(params[name].detach().flatten()[0]) == 6.0  # the current weights are back
    import random

    picks = pool.assign(400, random.Random(0))
    past = [p for p in picks if p]
    assert 150 < len(past) < 250 and {r for r, _ in past} == {"attacker", "defender"} and {i for _, i in past} == {0, 1}
    clone = OpponentPool(OpponentsConfig(prob=0.5, every=2, pool_size=2))
    clone.load_state_dict(pool.state_dict())
    assert [s for s, _ in clone.snapshots] == [4, 6] and torch.equal(clone.snapshots[1][1][name], pool.snapshots[1][1][name])


class OneHot:
    """Test double for the sentence encoder: each distinct text gets a fixed unit vector."""

    def __call__(self, texts):
        table = {"a": [1, 0], "b": [0, 1], "c": [0.6, 0.8]}
        return np.array([table[t] for t in texts], dtype=np.float32)


def test_novelty_bonus_arithmetic():
    nb = NoveltyBonus(NoveltyConfig(weight=0.5, memory=2), OneHot())
    # "a": nothing to compare with -> 0.5; "a" again: cos 1 -> 0; "b": max(cos a) = 0 -> 0.5
    assert nb.bonuses(["a", "a", "b"]) == pytest.approx([0.5, 0.0, 0.5])
    # memory holds the last 2 ("a", "b"): "c" has cos 0.6 with a, 0.8 with b -> 0.5 * 0.2
    assert nb.bonuses(["c"]) == pytest.approx([0.1])
    assert len(nb.memory) == 2


@pytest.mark.parametrize("extra", [
    ["train.replay.fraction=0.5"],
    ["train.opponents.prob=0.5", "train.opponents.every=1"],
    ["train.opponents.prob=0.5", "train.opponents.every=1", "train.parameter_sharing=role-adapters"],
    ["train.novelty.weight=0.5"],
])
def test_two_steps_with_each_variant(tiny_model_dir, tmp_path, extra):
    out = tmp_path / "run"
    train(cfg_for(tiny_model_dir, *extra, "train.sft.coef=0"), out, judge=FakeJudge(ph=False, rr=True), log=lambda *a: None)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    games = [json.loads(x) for x in (out / "games" / "step_2.jsonl").read_text().splitlines()]
    if "train.replay.fraction=0.5" in extra:  # benign prompts refused at step 1 are replayed at step 2
        assert rows[1]["replay/games"] == 2 and rows[1]["replay/pool_size"] >= 2
        assert sum(bool(g.get("replay")) for g in games) == 2 and len(games) == 4
    if "train.novelty.weight=0.5" in extra:
        assert rows[0]["reward/novelty_bonus_mean"] is not None
        assert all("novelty_bonus" in g for g in games if g["attacker"])
    if "train.opponents.prob=0.5" in extra:
        assert rows[1]["opponents/pool_size"] == 1


def test_resume_is_exact_with_replay_and_opponents(tiny_model_dir, tmp_path):
    sets = ["train.replay.fraction=0.5", "train.opponents.prob=0.5", "train.opponents.every=1", "train.sft.coef=0"]
    full, part = tmp_path / "full", tmp_path / "part"
    judge = FakeJudge(ph=False, rr=True)
    train(cfg_for(tiny_model_dir, *sets, steps=4), full, judge=judge, log=lambda *a: None)
    train(cfg_for(tiny_model_dir, *sets, steps=2), part, judge=judge, log=lambda *a: None)
    train(cfg_for(tiny_model_dir, *sets, steps=4), part, resume=part, judge=judge, log=lambda *a: None)
    a, b = read_metrics(full), read_metrics(part)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("loss/policy", "kl/mean", "replay/pool_size", "opponents/games", "reward/defender_mean"):
        assert [r.get(key) for r in a] == [r.get(key) for r in b], key
    for step in (3, 4):
        assert (full / "games" / f"step_{step}.jsonl").read_text() == (part / "games" / f"step_{step}.jsonl").read_text()


def test_kill_9_then_resume_is_exact_with_replay_and_opponents(tiny_model_dir, tmp_path):
    import signal

    from tests.rl.test_loop import _start_cli_run, _wait_for

    extra = ["--set", "train.replay.fraction=0.5", "--set", "train.opponents.prob=0.5", "--set", "train.opponents.every=1",
             "--set", "train.sft.coef=0"]
    ref = tmp_path / "ref"
    proc = _start_cli_run(ref, tiny_model_dir, steps=5, save_every=2, extra=extra)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    out = tmp_path / "run"
    proc = _start_cli_run(out, tiny_model_dir, steps=5, save_every=2, extra=extra)
    _wait_for(out / "checkpoints" / "step_2" / "state.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc = _start_cli_run(out, tiny_model_dir, steps=5, save_every=2, extra=[*extra, "--resume", str(out)])
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    a, b = read_metrics(ref), read_metrics(out)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    for key in ("loss/policy", "replay/pool_size", "opponents/games"):
        assert [r.get(key) for r in a] == [r.get(key) for r in b], key
    assert (ref / "games" / "step_5.jsonl").read_text() == (out / "games" / "step_5.jsonl").read_text()
