import json
import random

import pytest

from selfredteam.data import FieldMap, load_seeds, sample_batch
from selfredteam.errors import DataError


def test_embedded_pool():
    seeds = load_seeds("embedded")
    assert sum(s.harmful for s in seeds) == 500 and sum(not s.harmful for s in seeds) == 310


def test_jsonl_broken_line_names_file_and_line(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"prompt": "a", "label": "harmful"}\n{"prompt": "b", "label": \n')
    with pytest.raises(DataError, match=rf"{p}:2: not valid JSON"):
        load_seeds(str(p))


def test_missing_prompt_field(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"text": "a", "label": "harmful"}\n')
    with pytest.raises(DataError, match=r":1: missing or empty prompt field 'prompt' \(fields present: text, label\)"):
        load_seeds(str(p))
    seeds = load_seeds(str(p), FieldMap(prompt_field="text"))
    assert seeds[0].prompt == "a" and seeds[0].source == f"{p}:1"


def test_unknown_label_value(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"prompt": "a", "label": "spicy"}\n')
    with pytest.raises(DataError, match="neither harmful"):
        load_seeds(str(p))


def test_csv_and_json(tmp_path):
    c = tmp_path / "s.csv"
    c.write_text('prompt,is_bad\n"hello, world",1\nbye,0\n')
    seeds = load_seeds(str(c), FieldMap(label_field="is_bad"))
    assert [s.label for s in seeds] == ["harmful", "benign"] and seeds[0].prompt == "hello, world"
    c2 = tmp_path / "bad.csv"
    c2.write_text("prompt,label\na,harmful,extra\n")
    with pytest.raises(DataError, match=r"bad.csv:2: more values"):
        load_seeds(str(c2))
    j = tmp_path / "s.json"
    j.write_text(json.dumps([{"prompt": "x", "label": "benign"}]))
    assert load_seeds(str(j))[0].label == "benign"


def test_missing_file():
    with pytest.raises(DataError, match="does not exist"):
        load_seeds("/nonexistent/seeds.jsonl")


def test_sample_batch_balanced_and_seeded():
    pool = load_seeds("embedded")
    a = sample_batch(pool, 8, 0.5, random.Random(1))
    b = sample_batch(pool, 8, 0.5, random.Random(1))
    assert a == b and sum(s.harmful for s in a) == 4


def test_hf_dataset_from_local_dir(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"prompt": ["p1", "p2"], "label": ["harmful", "benign"]})
    ds.save_to_disk(str(tmp_path / "ds"))
    seeds = load_seeds(str(tmp_path / "ds"))
    assert [s.label for s in seeds] == ["harmful", "benign"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json"])
def test_non_utf8_file_names_file_line_and_fix(tmp_path, suffix):
    p = tmp_path / f"s{suffix}"
    good = {".jsonl": b'{"prompt": "ok", "label": "harmful"}\n', ".csv": b"prompt,label\n", ".json": b"[\n"}[suffix]
    bad = {".jsonl": b'{"prompt": "caf\xe9", "label": "benign"}\n', ".csv": b"caf\xe9,benign\n",
           ".json": b'{"prompt": "caf\xe9", "label": "benign"}]\n'}[suffix]
    p.write_bytes(good + bad)
    with pytest.raises(DataError, match=rf"{p}:2: not valid UTF-8 \(byte 0xe9 at column \d+\).*re-encode"):
        load_seeds(str(p))


def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"prompt": "a\u2028b", "label": "harmful"}\n{"prompt": "c", "label": "benign"}\n', encoding="utf-8")
    seeds = load_seeds(str(p))
    assert seeds[0].prompt == "a\u2028b" and seeds[1].source.endswith(":2")


def test_missing_class_explains_what_the_game_needs():
    from selfredteam.data import Seed, missing_class

    benign = [Seed("b", "benign"), Seed("c", "benign")]
    msg = missing_class(benign, 0.5, "seeds.jsonl")
    assert "no harmful seeds" in msg and "0 harmful, 2 benign" in msg and "game.harmful_fraction" in msg
    assert missing_class(benign, 0.0, "seeds.jsonl") is None  # asked for benign only: fine
    assert "no benign seeds" in missing_class([Seed("h", "harmful")], 0.5, "x")
    assert missing_class(load_seeds("embedded"), 0.5, "embedded") is None


def test_shipped_boundary_pools_join_the_training_pool():
    from selfredteam.config import load_config
    from selfredteam.data import load_pool

    adv, border = load_seeds("embedded:adversarial"), load_seeds("embedded:borderline")
    assert (sum(s.harmful for s in adv), len(adv)) == (500, 560)
    assert len(border) == 255 and all(s.harmful for s in border)
    cfg = load_config("cpu-demo", None, ["data.extra_seeds=embedded:adversarial,embedded:borderline"])
    pool = load_pool(cfg.data)
    assert len(pool) == 810 + 560 + 255
    assert len(load_pool(cfg.data, "embedded")) == 810  # an explicit source is that source alone
    with pytest.raises(DataError, match="embedded:adversarial"):
        load_seeds("embedded:nope")
