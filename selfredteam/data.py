"""Seed pools: load vanilla harmful/benign requests from JSONL, CSV, JSON or a HF dataset.

A malformed file fails with the file name, line number and what was expected. The default
pool (`embedded`) ships as package data (see selfredteam/assets/README.md for attribution).
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from selfredteam.errors import DataError

SeedLabel = Literal["harmful", "benign"]


@dataclass(frozen=True)
class Seed:
    prompt: str
    label: SeedLabel
    source: str = ""
    """Where it came from: `file:line` or `dataset[index]` (rows are referred to by index)."""
    category: str = ""
    """The record's `category` field when it has one (reports break attack success down by it)."""

    @property
    def harmful(self) -> bool:
        return self.label == "harmful"


@dataclass(frozen=True)
class FieldMap:
    """How raw records map to seeds (configurable for any dataset)."""

    prompt_field: str = "prompt"
    label_field: str = "label"
    harmful_values: tuple[str, ...] = ("harmful", "1", "true", "unsafe")
    benign_values: tuple[str, ...] = ("benign", "0", "false", "safe")
    default_label: SeedLabel | None = None
    """Used when records have no label field (e.g. a file of only harmful requests)."""


def read_utf8(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 fail with the file, line and column, and how to
    re-encode (a byte offset alone would leave the user searching)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column {column}). Seed and data "
            "files must be UTF-8: re-encode the file, e.g. `iconv -f latin1 -t utf-8 in.jsonl > out.jsonl` "
            "(if it was written as Latin-1), or fix that line."
        ) from None


def _records_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other line separators raw.
    for lineno, line in enumerate(read_utf8(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}). Each line of a "
                "JSONL seed file must be one JSON object such as "
                '{"prompt": "...", "label": "harmful"}; fix or delete that line.'
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object per line, got {type(obj).__name__}.")
        rows.append((lineno, obj))
    return rows


def _records_csv(path: Path) -> list[tuple[int, dict[str, Any]]]:
    with io.StringIO(read_utf8(path), newline="") as f:
        reader = csv.DictReader(f)
        rows = []
        try:
            for row in reader:
                if None in row:
                    raise DataError(
                        f"{path}:{reader.line_num}: more values than the header's "
                        f"{len(reader.fieldnames or [])} columns; quote fields that contain commas."
                    )
                rows.append((reader.line_num, row))
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e}).") from None
    return rows


def _records_json(path: Path) -> list[tuple[int, dict[str, Any]]]:
    text = read_utf8(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}).") from None
    if isinstance(data, dict):
        data = next((v for v in data.values() if isinstance(v, list)), None)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects (or an object holding one).")
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise DataError(f"{path}: item {i} is a {type(obj).__name__}, expected an object.")
    # JSON has no line per record; report the item index as the "line".
    return [(i, obj) for i, obj in enumerate(data)]


_READERS = {".jsonl": _records_jsonl, ".csv": _records_csv, ".json": _records_json}


def read_records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) pairs from a .jsonl, .csv or .json file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"Seed file {p} does not exist. Pass a .jsonl, .csv or .json path, or `embedded`.")
    reader = _READERS.get(p.suffix.lower())
    if reader is None:
        raise DataError(f"Seed file {p}: unsupported extension {p.suffix!r}; use one of {', '.join(_READERS)}.")
    return reader(p)


def to_seeds(records: list[tuple[int, dict[str, Any]]], fmap: FieldMap, where: str) -> list[Seed]:
    """Map raw records to Seeds, failing on the first bad record with its location."""
    harmful = {v.lower() for v in fmap.harmful_values}
    benign = {v.lower() for v in fmap.benign_values}
    seeds = []
    for lineno, rec in records:
        loc = f"{where}:{lineno}"
        prompt = rec.get(fmap.prompt_field)
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(
                f"{loc}: missing or empty prompt field {fmap.prompt_field!r} (fields present: "
                f"{', '.join(rec) or 'none'}). Set data.prompt_field to the right column."
            )
        if fmap.label_field in rec:
            raw = str(rec[fmap.label_field]).strip().lower()
            if raw in harmful:
                label: SeedLabel = "harmful"
            elif raw in benign:
                label = "benign"
            else:
                raise DataError(
                    f"{loc}: label {rec[fmap.label_field]!r} in field {fmap.label_field!r} is neither "
                    f"harmful ({', '.join(sorted(harmful))}) nor benign ({', '.join(sorted(benign))}). "
                    "Set data.harmful_values / data.benign_values to match your labels."
                )
        elif fmap.default_label:
            label = fmap.default_label
        else:
            raise DataError(
                f"{loc}: no label field {fmap.label_field!r}. Set data.label_field, or give every "
                "seed a label (harmful/benign)."
            )
        category = rec.get("category") or rec.get("FunctionalCategory") or rec.get("SemanticCategory") or ""
        seeds.append(Seed(prompt=prompt.strip(), label=label, source=loc, category=str(category)))
    return seeds


EMBEDDED_POOLS: dict[str, tuple[str, ...]] = {
    "embedded": ("harmful.jsonl", "benign.jsonl"),
    "embedded:adversarial": ("adversarial.jsonl",),
    "embedded:borderline": ("harmful_borderline.jsonl",),
}
"""Shipped pools (selfredteam/assets/README.md): the 810 vanilla seeds; the adversarial
(jailbreak-style) forms of the same rows, so a defender sees the framing it is attacked with,
not only plain requests; OR-Bench-Toxic borderline harmful requests, the harmful counterpart of
the OR-Bench-Hard benign seeds, so the boundary between scary-looking and harmful is in the pool."""


def embedded_seed_files(name: str = "embedded") -> list[Path]:
    if name not in EMBEDDED_POOLS:
        raise DataError(f"Unknown shipped seed pool {name!r}. Valid: {', '.join(EMBEDDED_POOLS)}.")
    root = resources.files("selfredteam") / "assets" / "seeds"
    return [Path(str(root / f)) for f in EMBEDDED_POOLS[name]]


def load_seeds(spec: str, fmap: FieldMap | None = None, split: str = "train") -> list[Seed]:
    """Load a seed pool from `embedded`, a file path, or a Hugging Face dataset name."""
    fmap = fmap or FieldMap()
    if spec == "embedded" or spec.startswith("embedded:"):
        return [s for p in embedded_seed_files(spec) for s in to_seeds(read_records(p), FieldMap(), str(p))]
    path = Path(spec)
    if path.is_dir():
        seeds = _load_hf(spec, fmap, split)
    elif path.suffix.lower() in _READERS or path.exists():
        seeds = to_seeds(read_records(path), fmap, str(path))
    else:
        seeds = _load_hf(spec, fmap, split)
    if not seeds:
        raise DataError(f"Seed source {spec} holds no seeds.")
    return seeds


def _load_hf(name: str, fmap: FieldMap, split: str) -> list[Seed]:
    """HF hub datasets (users with a network) or a local dataset dir saved by `datasets`."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{name!r} is not a file, and loading it as a Hugging Face dataset needs the `datasets` "
            "package: pip install 'selfredteam[hub]'."
        ) from None
    try:
        ds = datasets.load_from_disk(name) if Path(name).is_dir() else datasets.load_dataset(name, split=split)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    except Exception as e:  # datasets raises many types (network, missing split, ...)
        raise DataError(
            f"Could not load Hugging Face dataset {name!r} (split {split!r}): {e}. Check the name and "
            "your network, or pass a local .jsonl/.csv/.json file."
        ) from None
    return to_seeds([(i, dict(row)) for i, row in enumerate(ds)], fmap, f"{name}[{split}]")


def load_pool(data_cfg: Any, spec: str | None = None) -> list[Seed]:
    """Seeds from `spec`, or the config's training pool: `data.seeds` plus every `data.extra_seeds`
    source, with the config's field mapping (a batch then draws uniformly within each class)."""
    d = data_cfg
    fmap = FieldMap(d.prompt_field, d.label_field, tuple(d.harmful_values), tuple(d.benign_values))
    specs = [spec] if spec else [d.seeds, *getattr(d, "extra_seeds", [])]
    return [s for one in specs for s in load_seeds(one, fmap, d.split)]


def missing_class(pool: list[Seed], harmful_fraction: float, where: str) -> str | None:
    """Why `pool` cannot give the batches `game.harmful_fraction` asks for, or None when it can.

    The game needs both classes: harmful seeds teach refusing and attacking, benign ones
    answering and baiting over-refusal. A pool of one class silently trains only half the game."""
    n_harm = sum(s.harmful for s in pool)
    lacking = [name for name, n, needed in (("harmful", n_harm, harmful_fraction > 0),
                                           ("benign", len(pool) - n_harm, harmful_fraction < 1)) if needed and not n]
    if not lacking:
        return None
    return (f"The seed pool {where} has no {lacking[0]} seeds ({n_harm} harmful, {len(pool) - n_harm} benign), "
            f"but game.harmful_fraction={harmful_fraction} asks for both classes: every batch will be "
            f"{'benign' if lacking[0] == 'harmful' else 'harmful'} only. Add {lacking[0]} seeds (data.seeds), "
            "check data.label_field / data.harmful_values / data.benign_values, or set game.harmful_fraction "
            f"to {1 if lacking[0] == 'benign' else 0} if that is what you mean.")


def sample_batch(pool: list[Seed], n: int, harmful_fraction: float, rng: random.Random) -> list[Seed]:
    """Draw `n` seeds, `harmful_fraction` of them harmful (without replacement within a batch)."""
    harmful = [s for s in pool if s.harmful]
    benign = [s for s in pool if not s.harmful]
    n_harm = round(n * harmful_fraction)
    if not harmful:
        n_harm = 0
    if not benign:
        n_harm = n
    pick = rng.sample(harmful, min(n_harm, len(harmful))) + rng.sample(benign, min(n - n_harm, len(benign)))
    rng.shuffle(pick)
    return pick
