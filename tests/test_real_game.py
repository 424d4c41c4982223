"""Real end-to-end games: the embedded model generates, the embedded judge labels (slow, CPU)."""

import json
import os
import subprocess
import sys

import pytest

from selfredteam.game.rewards import Labels, compute_rewards

pytestmark = pytest.mark.slow


def _play(out, *extra):
    cmd = [sys.executable, "-m", "selfredteam.cli", "play", "--preset", "cpu-demo", "--games", "4", "--out", str(out),
           "--set", "generation.attacker_max_new_tokens=48", "--set", "generation.defender_max_new_tokens=48", *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ})
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(line) for line in (out / "games.jsonl").read_text().splitlines()]


def _check_rewards(games):
    for g in games:
        j = g["judge"]
        if j["parse_error"]:
            assert g["rewards"] == {"attacker": None, "defender": None}
            continue
        exp = compute_rewards(
            g["reward_mode"], Labels(j["prompt_harmful"], j["response_refusal"], j["response_harmful"]),
            seed_harmful=g["seed_label"] == "harmful", revised=g["revised"], cot=g["cot"],
            attacker_violation=g["attacker"]["cot_violation"] if g["attacker"] else None,
            defender_violation=g["defender"]["cot_violation"],
        )
        assert g["rewards"] == {"attacker": exp.attacker, "defender": exp.defender}


def test_real_selfplay_games(tmp_path):
    games = _play(tmp_path)
    assert len(games) == 4 and sum(g["revised"] for g in games) == 2
    assert all(g["defender"]["raw"] for g in games)
    _check_rewards(games)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["perf/tokens_per_s"] > 0 and (tmp_path / "config.yaml").is_file()


def test_real_games_zero_sum_no_cot(tmp_path):
    games = _play(tmp_path, "--set", "game.reward_mode=zero_sum", "--set", "game.cot=false")
    assert all(g["reward_mode"] == "zero_sum" and g["cot"] is False for g in games)
    _check_rewards(games)
    for g in games:
        if g["rewards"]["attacker"] is not None:
            assert g["rewards"]["defender"] == -g["rewards"]["attacker"]


def test_local_model_dir_takes_the_hub_code_path():
    """`name_or_path` as a local HF dir goes through the same from_pretrained path as a hub id."""
    from selfredteam.config import ModelConfig
    from selfredteam.game.prompts import defender_turn
    from selfredteam.policy.base import SamplingParams
    from selfredteam.policy.embedded import embedded_model_dir
    from selfredteam.policy.hf import TransformersPolicy

    policy = TransformersPolicy.from_config(ModelConfig(name_or_path=str(embedded_model_dir())))
    out = policy.generate([defender_turn("Say hello.", cot=False)], SamplingParams(8, 0.0, 1.0))
    assert out[0].completion_ids and out[0].prompt_ids and isinstance(out[0].text, str)


def test_embedded_judge_detects_refusals():
    from selfredteam.eval.judge import refusal_dev_set
    from selfredteam.judges.embedded import EmbeddedJudge

    judge = EmbeddedJudge.load()
    dev = refusal_dev_set()
    labels = judge.judge([(p, r) for p, r, _ in dev])
    correct = sum(j.response_refusal == gold for j, (_, _, gold) in zip(labels, dev))
    assert correct / len(dev) >= 0.8
    assert all(j.response_harmful is False for j, (_, _, gold) in zip(labels, dev) if gold)


def test_real_train_step(tmp_path):
    """One real RL step with the embedded model and judge: generation, judge, gradient update."""
    cmd = [sys.executable, "-m", "selfredteam.cli", "train", "--preset", "cpu-demo", "--out", str(tmp_path),
           "--set", "train.steps=1", "--set", "train.rollout_batch_size=4", "--set", "train.train_batch_size=4",
           "--set", "generation.attacker_max_new_tokens=24", "--set", "generation.defender_max_new_tokens=48"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env={**os.environ})
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert m["loss/grad_norm"] > 0 and m["samples"] >= 4
    assert (tmp_path / "checkpoints" / "step_1" / "adapter" / "adapter_model.safetensors").is_file()


def test_real_two_variant_study(tmp_path):
    """`selfredteam study` end to end with the embedded model and judge: 2 variants x 1 step."""
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "selfredteam.cli", "study", "--variants", "selfplay,no-cot", "--seeds", "0",
           "--out", str(out), "--subsets", "harmful_adversarial,benign_adversarial", "--per-subset", "3",
           "--diversity-seeds", "4", "--set", "train.steps=1", "--set", "train.rollout_batch_size=4",
           "--set", "train.train_batch_size=4", "--set", "generation.attacker_max_new_tokens=24",
           "--set", "generation.defender_max_new_tokens=48"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env={**os.environ})
    assert res.returncode == 0, res.stderr[-3000:]
    table = json.loads((out / "study.json").read_text())
    assert set(table["variants"]) == {"selfplay", "no-cot"}
    assert table["comparisons"][0]["comparison"] == "hidden CoT"
    assert (out / "report" / "report.html").is_file() and "| selfplay | 0 |" in (out / "study.md").read_text()
    # A re-run finds every phase done: nothing is trained or answered again.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl")}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert again.returncode == 0, again.stderr[-3000:]
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl")}
