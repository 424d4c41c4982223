import pytest

from selfredteam.config import (
    PRESETS,
    config_changes,
    load_config,
    save_config,
    to_dict,
    valid_keys,
)
from selfredteam.errors import ConfigError


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_load(preset):
    cfg = load_config(preset)
    assert cfg.train.train_batch_size % cfg.train.micro_batch_size == 0


def test_paper_preset_matches_method():
    cfg = load_config("paper-8b")
    assert cfg.train.lr == 5e-7 and cfg.train.rollout_batch_size == 128 and cfg.train.train_batch_size == 32
    assert cfg.generation.top_p == 1.0 and cfg.train.steps == 200 and cfg.train.kl_coef == 0.01
    assert cfg.generation.defender_max_new_tokens == 2048 and cfg.generation.max_prompt_length == 2048


def test_cpu_safety_is_the_cpu_demo_game_after_a_warm_start_on_shipped_rows():
    """The preset changes only what its BENCHMARKS.md rows measured, and everything it reads ships
    in the package (no network, no file a user must make)."""
    from selfredteam.data import load_pool
    from selfredteam.rl.sft import load_sft_rows

    demo, safety = load_config("cpu-demo"), load_config("cpu-safety")
    assert safety.model == demo.model and safety.judge == demo.judge and safety.generation == demo.generation
    assert safety.train.steps == demo.train.steps and safety.train.rollout_batch_size == demo.train.rollout_batch_size
    assert safety.game.refusal_label == "seed" and safety.train.lr < safety.train.sft.lr
    assert len(load_pool(safety.data)) == 810 + 560 + 255
    rows = load_sft_rows(safety.train.sft.data)
    assert {r.label for r in rows} == {"harmful", "benign"} and safety.train.sft.warmup_steps > len(rows)


def test_overrides_parse_types():
    cfg = load_config("cpu-demo", overrides=["game.reward_mode=zero_sum", "game.cot=false", "train.lr=3e-6",
                                             "data.harmful_values=yes,harm"])
    assert cfg.game.reward_mode == "zero_sum" and cfg.game.cot is False and cfg.train.lr == 3e-6
    assert cfg.data.harmful_values == ["yes", "harm"]


def test_unknown_preset_lists_valid():
    with pytest.raises(ConfigError, match="cpu-demo, single-gpu, paper-8b"):
        load_config("gpu-huge")


def test_unknown_key_lists_section_keys():
    with pytest.raises(ConfigError, match="game.reward_mode"):
        load_config("cpu-demo", overrides=["game.rewards=1"])
    with pytest.raises(ConfigError, match="Valid sections"):
        load_config("cpu-demo", overrides=["nope.x=1"])


def test_bad_values():
    with pytest.raises(ConfigError, match="general_sum"):
        load_config("cpu-demo", overrides=["game.reward_mode=nash"])
    with pytest.raises(ConfigError, match="integer"):
        load_config("cpu-demo", overrides=["train.steps=many"])
    with pytest.raises(ConfigError, match="true or false"):
        load_config("cpu-demo", overrides=["game.cot=maybe"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config("cpu-demo", overrides=["game.cot"])


def test_micro_batch_must_divide():
    with pytest.raises(ConfigError, match="micro-batch"):
        load_config("cpu-demo", overrides=["train.train_batch_size=8", "train.micro_batch_size=3"])


def test_negative_decision_weight_is_refused():
    with pytest.raises(ConfigError, match="decision_weight"):
        load_config("cpu-demo", overrides=["train.sft.decision_weight=-1"])


@pytest.mark.parametrize("value", ["0", "-2"])
def test_an_answer_weight_that_is_not_positive_is_refused(value):
    with pytest.raises(ConfigError, match="answer_weight must be > 0"):
        load_config("cpu-demo", overrides=[f"train.sft.answer_weight={value}"])


def test_yaml_roundtrip(tmp_path):
    cfg = load_config("cpu-demo", overrides=["game.cot=false"])
    path = save_config(cfg, tmp_path)
    again = load_config(None, yaml_path=path)
    assert again == cfg


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("game:\n  bogus: 1\n")
    with pytest.raises(ConfigError, match=str(bad)):
        load_config("cpu-demo", yaml_path=bad)


def test_valid_keys_cover_sections():
    keys = valid_keys()
    assert "model.name_or_path" in keys and "judge.kind" in keys and "game.cot" in keys


def test_renamed_key_still_loads():
    cfg = load_config("cpu-demo", overrides=["train.max_prompt_length=700"])
    assert cfg.generation.max_prompt_length == 700


def test_flat_sft_keys_still_work_and_warn_once(tmp_path, monkeypatch):
    """train.sft_* became the nested train.sft.* section: an old key (command line or YAML) still
    sets the nested one, with one FutureWarning per old key however often it is used."""
    import warnings

    import selfredteam.config as config_mod

    monkeypatch.setattr(config_mod, "_warned", set())
    old_yaml = tmp_path / "old.yaml"
    old_yaml.write_text("train:\n  sft_paired: true\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config("cpu-demo", yaml_path=old_yaml, overrides=["train.sft_coef=0.25", "train.sft_coef=0.5"])
        again = load_config("cpu-demo", overrides=["train.sft_coef=0.75"])
    assert (cfg.train.sft.coef, cfg.train.sft.paired, again.train.sft.coef) == (0.5, True, 0.75)
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert sorted(messages) == ["Config key train.sft_coef is deprecated: use train.sft.coef (the old key still works).",
                                "Config key train.sft_paired is deprecated: use train.sft.paired (the old key still works)."]
    nested = load_config("cpu-demo", overrides=["train.sft.coef=0.1"])
    assert nested.train.sft.coef == 0.1 and "train.sft.warmup_steps" in valid_keys()


def test_config_changes_name_what_a_resume_in_place_would_change(tmp_path):
    """`train --resume RUN` without --out continues RUN only with RUN's own config: a command that
    leaves out the run's preset lists what differs; the run's config.yaml gives it back whole; how
    the run is driven (time limit, saving, threads) may change."""
    import json

    safety = load_config("cpu-safety")
    saved = json.loads(json.dumps(to_dict(safety)))  # as a checkpoint's state.json holds it
    changes = config_changes(saved, load_config("cpu-demo"))
    assert changes and all(": " in c and " -> " in c for c in changes)
    assert any(c.startswith("train.sft.") for c in changes)
    save_config(safety, tmp_path)
    assert config_changes(saved, load_config("cpu-demo", tmp_path / "config.yaml")) == []
    driven = ["train.time_limit_min=0", "train.save_every=1", "run.threads=1", "train.games_log_every=5"]
    assert config_changes(saved, load_config("cpu-safety", overrides=driven)) == []
    lr = config_changes(saved, load_config("cpu-safety", overrides=["train.lr=1e-5"]))
    assert len(lr) == 1 and lr[0].startswith("train.lr: ") and lr[0].endswith(" -> 1e-05")
    older = json.loads(json.dumps(saved))
    older["train"]["a_key_since_renamed"] = 1  # a checkpoint from before a rename: only one side has it
    assert config_changes(older, safety) == []
