"""CLI errors: one paragraph, non-zero exit, no traceback (run as a real subprocess)."""

import os
import subprocess
import sys

import pytest


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "selfredteam.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def assert_clean_error(res, *needles):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    for n in needles:
        assert n in " ".join(res.stderr.split()), res.stderr


def test_unknown_preset(tmp_path):
    assert_clean_error(run_cli("play", "--preset", "gpu-huge", "--out", str(tmp_path)), "Unknown preset", "cpu-demo")


def test_broken_seed_file(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"prompt": "a", "label": "harmful"}\n{"prompt": oops}\n')
    res = run_cli("play", "--seeds", str(seeds), "--out", str(tmp_path / "o"))
    assert_clean_error(res, f"{seeds}:2", "not valid JSON")


def test_unreachable_judge_url(tmp_path):
    res = run_cli("play", "--out", str(tmp_path), "--set", "judge.kind=wildguard", "--set", "judge.backend=openai",
                  "--set", "judge.base_url=http://127.0.0.1:9/v1", "--set", "judge.max_retries=1",
                  "--set", "judge.cache=false")
    assert_clean_error(res, "judge endpoint", "127.0.0.1:9", "failed after 2 attempts")


def test_bad_override_lists_keys(tmp_path):
    assert_clean_error(run_cli("play", "--set", "game.rewardmode=zero_sum"), "Unknown config key", "game.reward_mode")


def test_debug_shows_traceback(tmp_path):
    res = run_cli("play", "--preset", "nope", "--debug")
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_config_command():
    res = run_cli("config", "--preset", "paper-8b")
    assert res.returncode == 0 and "lr: 5.0e-07" in res.stdout


@pytest.mark.parametrize("cmd", [["--help"], ["play", "--help"], ["judge", "eval", "--help"], ["self-distill", "--help"]])
def test_help(cmd):
    assert run_cli(*cmd).returncode == 0


def test_train_bad_micro_batch_touches_nothing(tmp_path):
    out = tmp_path / "run"
    res = run_cli("train", "--out", str(out), "--set", "train.train_batch_size=8", "--set", "train.micro_batch_size=3")
    assert_clean_error(res, "cannot be split into micro-batches")
    assert not out.exists()


def test_train_missing_resume_dir_touches_nothing(tmp_path):
    out = tmp_path / "run"
    res = run_cli("train", "--out", str(out), "--resume", str(tmp_path / "nope"))
    assert_clean_error(res, "does not exist")
    assert not out.exists()


def test_self_distill_out_is_a_directory(tmp_path):
    assert_clean_error(run_cli("self-distill", "--out", str(tmp_path)), "is a directory")
