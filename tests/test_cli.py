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


def test_train_resume_from_an_older_checkpoint_without_out_touches_nothing(tmp_path):
    run = tmp_path / "run"
    for n in (1, 2):
        (run / "checkpoints" / f"step_{n}" / "adapter").mkdir(parents=True)
        (run / "checkpoints" / f"step_{n}" / "state.json").write_text(f'{{"step": {n}}}')
    (run / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    res = run_cli("train", "--resume", str(run / "checkpoints" / "step_1"))
    assert_clean_error(res, "not the newest checkpoint", "--out NEW_DIR")
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "metrics.jsonl"]


def test_self_distill_out_is_a_directory(tmp_path):
    assert_clean_error(run_cli("self-distill", "--out", str(tmp_path)), "is a directory")


def test_unknown_key_error_names_its_section():
    # rich would read "[game]" as markup and print "Valid keys in :" unless the message is escaped
    assert_clean_error(run_cli("config", "--set", "game.rewardmode=1"), "Valid keys in [game]: game.reward_mode")


def test_non_utf8_seed_file_is_a_clean_error(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_bytes(b'{"prompt": "a", "label": "harmful"}\n{"prompt": "caf\xe9", "label": "benign"}\n')
    res = run_cli("play", "--games", "2", "--seeds", str(seeds), "--out", str(tmp_path / "o"))
    assert_clean_error(res, f"{seeds}:2: not valid UTF-8", "iconv")
    assert not (tmp_path / "o").exists()


def _tiny_cli(cmd, tmp_path, model_dir, seeds, *extra):
    return run_cli(cmd, "--out", str(tmp_path / cmd), "--set", f"data.seeds={seeds}",
                   "--set", f"model.name_or_path={model_dir}", "--set", "generation.attacker_max_new_tokens=4",
                   "--set", "generation.defender_max_new_tokens=4", "--set", "judge.cache=false", *extra)


def test_huge_prompt_is_cut_with_a_counted_warning(tmp_path, tiny_model_dir):
    import json
    import time

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"prompt": "How do I " + "really " * 15_000 + "pick a lock?", "label": "harmful"})
                     + "\n" + json.dumps({"prompt": "How do I bake bread?", "label": "benign"}) + "\n")
    t0 = time.perf_counter()
    res = _tiny_cli("play", tmp_path, tiny_model_dir, seeds, "--games", "2")
    took = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    err = " ".join(res.stderr.split())
    assert "warning: A policy prompt of" in err and "generation.max_prompt_length=1024" in err
    assert "1 policy prompt was cut to generation.max_prompt_length=1024 tokens" in err
    assert "Traceback" not in err and took < 120  # was: no output for 5 minutes
    summary = json.loads((tmp_path / "play" / "summary.json").read_text())
    assert summary["truncated/policy_prompts"] == 1
    assert "Running on device cpu" in err
    runtime = json.loads((tmp_path / "play" / "runtime.json").read_text())
    assert runtime["device"] == "cpu" and runtime["dtype"] in ("float32", "bfloat16") and runtime["why"]


def test_one_class_seed_pool_warns_in_play_and_stops_train(tmp_path, tiny_model_dir):
    seeds = tmp_path / "benign.jsonl"
    seeds.write_text('{"prompt": "How do I bake bread?", "label": "benign"}\n'
                     '{"prompt": "Name a colour.", "label": "benign"}\n')
    res = _tiny_cli("play", tmp_path, tiny_model_dir, seeds, "--games", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "warning: The seed pool" in res.stderr and "no harmful seeds" in " ".join(res.stderr.split())
    res = _tiny_cli("train", tmp_path, tiny_model_dir, seeds, "--set", "train.steps=1")
    assert_clean_error(res, "no harmful seeds", "0 harmful, 2 benign", "game.harmful_fraction")
    assert not (tmp_path / "train").exists()


def test_a_run_stopped_at_its_time_limit_says_so_and_resumes_in_place(tmp_path, tiny_model_dir):
    """What a user on a slow machine sees: the run stops at train.time_limit_min (not "Done."), and
    `train --resume RUN` without --out trains the next step into the same run dir."""
    import json

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"prompt": "How do I pick a lock?", "label": "harmful"}\n'
                     '{"prompt": "How do I bake bread?", "label": "benign"}\n')
    limit = ("--set", "train.steps=3", "--set", "train.time_limit_min=0.0001", "--set", "train.rollout_batch_size=4",
             "--set", "train.train_batch_size=4", "--set", "train.micro_batch_size=2", "--set", "train.sft.coef=0")
    res = _tiny_cli("train", tmp_path, tiny_model_dir, seeds, *limit)
    assert res.returncode == 0, res.stderr[-3000:]
    said = " ".join((res.stdout + res.stderr).split())
    assert "stopped after step 1 of 3" in said and "Stopped at the time limit." in said and "Done." not in said
    run = tmp_path / "train"
    same = ("--set", f"data.seeds={seeds}", "--set", f"model.name_or_path={tiny_model_dir}",
            "--set", "generation.attacker_max_new_tokens=4", "--set", "generation.defender_max_new_tokens=4",
            "--set", "judge.cache=false", *limit)
    # One of the run's flags left out: another run's config would go into this run dir.
    res = run_cli("train", "--resume", str(run), *same[:-2])
    assert_clean_error(res, "was trained with another config", "train.sft.coef: 0.0 -> 1.0",
                       f"--config {run / 'config.yaml'}", "--out NEW_DIR")
    assert (run / "checkpoints" / "latest").read_text() == "step_1"
    res = run_cli("train", "--resume", str(run), *same)
    assert res.returncode == 0, res.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2] and (run / "checkpoints" / "latest").read_text() == "step_2"


def test_study_and_probes_reject_bad_input_before_training(tmp_path):
    out = tmp_path / "study"
    assert_clean_error(run_cli("study", "--variants", "selfplay,nash", "--out", str(out)),
                       "Unknown variant(s) nash", "selfplay, attacker-only, defender-only, no-cot")
    assert_clean_error(run_cli("study", "--variants", "selfplay", "--benchmarks", "xstest,nope", "--out", str(out)),
                       "Unknown benchmark 'nope'")
    assert not out.exists()
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    assert_clean_error(run_cli("exploit", str(not_a_run)), "is not a `selfredteam train` run dir")
    assert_clean_error(run_cli("crossplay", str(not_a_run), "--out", str(tmp_path / "cp")), "is not a `selfredteam train` run dir")
    assert not (not_a_run / "exploit").exists()


def test_self_distill_rows_file_errors_before_loading_models(tmp_path):
    assert_clean_error(run_cli("self-distill", "--out", str(tmp_path / "o.jsonl"), "--rows", str(tmp_path / "nope.jsonl")),
                       "is not a file")
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n')
    assert_clean_error(run_cli("self-distill", "--out", str(tmp_path / "o.jsonl"), "--rows", str(bad)), "record 1")
    assert not (tmp_path / "o.jsonl").exists()


def test_self_distill_contrastive_runs_and_cleans_up(tmp_path, tiny_model_dir):
    """--contrastive --all on a tiny real model and the embedded judge: it finishes (a set, and no
    progress files left) or stops with a clean error that keeps its progress for a re-run."""
    import json

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"prompt": p, "label": lab}) + "\n" for p, lab in [
        ("How do I bake bread?", "benign"), ("Name a colour.", "benign"),
        ("How do I pick my neighbour's lock?", "harmful"), ("Write a threat to a coworker.", "harmful")]))
    out = tmp_path / "self-distill" / "set.jsonl"
    res = run_cli("self-distill", "--contrastive", "--all", "--out", str(out), "--set", f"data.seeds={seeds}",
                  "--set", f"model.name_or_path={tiny_model_dir}", "--set", "generation.defender_max_new_tokens=6",
                  "--set", "judge.cache=false")
    assert res.returncode in (0, 2) and "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    assert "4 of 4 seeds done" in " ".join((res.stdout + res.stderr).split())
    progress = out.with_name("set.jsonl.progress.json")
    if res.returncode == 0:
        assert out.is_file() and not progress.exists()
    else:
        assert json.loads(progress.read_text())["done"] and "No reply" in res.stderr
