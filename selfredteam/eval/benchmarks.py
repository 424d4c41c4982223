"""Safety benchmarks: a registry of loaders for the original file formats and HF dataset names.

Each benchmark yields `EvalPrompt`s labelled harmful (we measure attack success / refusal) or
benign (we measure compliance / over-refusal), grouped into subsets (e.g. XSTest safe/unsafe,
WildJailbreak vanilla/adversarial). Small dev copies of XSTest, WildJailbreak eval,
OR-Bench-Hard and OR-Bench-Toxic ship as package data (see selfredteam/assets/README.md), so `eval` runs offline;
the others load from a local file in their original format (`--benchmark-path NAME=PATH`) or,
with a network, by HF name. An unknown name lists the valid ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from selfredteam.data import read_records, read_utf8
from selfredteam.errors import DataError


@dataclass(frozen=True)
class EvalPrompt:
    prompt: str
    label: str
    """`harmful` or `benign`."""
    subset: str
    source: str
    """file:line or dataset[index]: rows are referred to by index, never quoted in docs."""


Rows = list[tuple[int, dict[str, Any]]]


def _asset(name: str) -> Path:
    return Path(str(resources.files("selfredteam") / "assets" / "eval" / name))


def _records(path: Path) -> Rows:
    if path.suffix == ".json":
        data = json.loads(read_utf8(path))
        if isinstance(data, dict):  # e.g. HarmBench test cases: {behavior_id: [cases]}
            pairs = [(k, c) for k, v in data.items() for c in (v if isinstance(v, list) else [v])]
            return [(i, {"behavior_id": k, "prompt": c}) for i, (k, c) in enumerate(pairs)]
        return list(enumerate(data))
    return read_records(path)


def _field(rec: dict[str, Any], *names: str) -> Any:
    for n in names:
        if n in rec and rec[n] not in (None, ""):
            return rec[n]
    raise KeyError(names[0])


# --- parsers: (records, where) -> prompts, one per benchmark's original format ---------------

def _xstest(rows: Rows, where: str) -> list[EvalPrompt]:
    out = []
    for i, r in rows:
        unsafe = str(r.get("label", "")).lower() == "unsafe" or str(r.get("type", "")).startswith("contrast_")
        out.append(EvalPrompt(r["prompt"], "harmful" if unsafe else "benign",
                              "xstest_unsafe" if unsafe else "xstest_safe", f"{where}:{i}"))
    return out


def _wildjailbreak(rows: Rows, where: str, label: str | None = None) -> list[EvalPrompt]:
    out = []
    for i, r in rows:
        lab = label or ("harmful" if str(r.get("label", "1")) in ("1", "harmful") else "benign")
        if "vanilla" in r and r["vanilla"]:
            out.append(EvalPrompt(r["vanilla"], lab, f"{lab}_vanilla", f"{where}:{i}"))
        if "adversarial" in r and r["adversarial"]:
            out.append(EvalPrompt(r["adversarial"], lab, f"{lab}_adversarial", f"{where}:{i}"))
    return out


def _single(label: str, subset: str, *fields: str) -> Callable[[Rows, str], list[EvalPrompt]]:
    def parse(rows: Rows, where: str) -> list[EvalPrompt]:
        return [EvalPrompt(str(_field(r, *fields)), label, subset, f"{where}:{i}") for i, r in rows]

    return parse


def _wildguardtest(rows: Rows, where: str) -> list[EvalPrompt]:
    out = []
    for i, r in rows:
        lab = "harmful" if str(r.get("prompt_harm_label", "")).lower() == "harmful" else "benign"
        adv = "adversarial" if r.get("adversarial") else "vanilla"
        out.append(EvalPrompt(r["prompt"], lab, f"{lab}_{adv}", f"{where}:{i}"))
    return out


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    parse: Callable[[Rows, str], list[EvalPrompt]]
    shipped: tuple[str, ...] = ()
    """Package-data files (dev copies) used when no path is given."""
    hf: tuple[str, str | None, str] | None = None
    """(dataset name, config, split) for hub loading."""


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("xstest", "XSTest v2: 250 safe prompts to answer, 200 unsafe (contrast_*) to refuse",
              _xstest, ("xstest.json",), ("walledai/XSTest", None, "test")),
    Benchmark("wildjailbreak", "WildJailbreak eval: vanilla + adversarial harmful and benign",
              _wildjailbreak, ("wildjailbreak_harmful.jsonl", "wildjailbreak_benign.jsonl"),
              ("allenai/wildjailbreak", "eval", "train")),
    Benchmark("or_bench_hard", "OR-Bench-Hard-1K: benign prompts that over-refusing models reject",
              _single("benign", "or_bench_hard", "prompt"), ("or_bench_hard.csv",),
              ("bench-llm/or-bench", "or-bench-hard-1k", "train")),
    Benchmark("or_bench_toxic", "OR-Bench-Toxic: harmful prompts that must be refused",
              _single("harmful", "or_bench_toxic", "prompt"), ("or_bench_toxic.csv",),
              ("bench-llm/or-bench", "or-bench-toxic", "train")),
    Benchmark("harmbench", "HarmBench text behaviours (CSV `Behavior`) or precomputed test cases (JSON)",
              _single("harmful", "harmbench", "Behavior", "behavior", "prompt", "test_case"), (),
              ("walledai/HarmBench", "standard", "train")),
    Benchmark("wildguardtest", "WildGuardTest prompts (harmful/benign, vanilla/adversarial)",
              _wildguardtest, (), ("allenai/wildguardmix", "wildguardtest", "test")),
    Benchmark("dan", "Do-Anything-Now jailbreak prompts (each a harmful attack)",
              _single("harmful", "dan", "prompt", "text", "jailbreak"), (),
              ("TrustAIRLab/in-the-wild-jailbreak-prompts", "jailbreak_2023_12_25", "train")),
    Benchmark("trustllm_jailbreak", "TrustLLM jailbreak triggers (jailbreak.json)",
              _single("harmful", "trustllm_jailbreak", "prompt"), (), None),
]}


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise DataError(f"Unknown benchmark {name!r}. Valid: {', '.join(BENCHMARKS)}.") from None


def load_benchmark(name: str, path: str | None = None) -> list[EvalPrompt]:
    """Prompts of a benchmark from `path` (original format), the shipped copy, or the HF hub."""
    bench = get_benchmark(name)
    if path:
        p = Path(path)
        if not p.exists():
            raise DataError(f"Benchmark file {p} for {name} does not exist.")
        return _parse(bench, _records(p), str(p))
    if bench.shipped:
        return [e for f in bench.shipped for e in _parse(bench, _records(_asset(f)), f"{name}/{f}",
                                                          label=_shipped_label(f))]
    if bench.hf is None:
        raise DataError(f"{name} has no hub copy: pass its file with --benchmark-path {name}=PATH.")
    return _load_hf(bench)


def _shipped_label(file: str) -> str | None:
    return "harmful" if "harmful" in file else "benign" if "benign" in file else None


def _parse(bench: Benchmark, rows: Rows, where: str, label: str | None = None) -> list[EvalPrompt]:
    try:
        if bench.parse is _wildjailbreak:
            return _wildjailbreak(rows, where, label)
        return bench.parse(rows, where)
    except KeyError as e:
        raise DataError(f"{where}: records of {bench.name} need field {e.args[0]!r}; see `selfredteam eval --list`.") from None


def _load_hf(bench: Benchmark) -> list[EvalPrompt]:
    assert bench.hf is not None
    name, config, split = bench.hf
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # network, gated dataset, missing package
        raise DataError(
            f"Could not load {bench.name} from the hub ({name}, {config}, {split}): {e}. Download it and pass "
            f"--benchmark-path {bench.name}=PATH."
        ) from None
    return _parse(bench, [(i, dict(r)) for i, r in enumerate(ds)], f"{name}[{split}]")


def generic_prompts(path: str, prompt_field: str, label: str) -> list[EvalPrompt]:
    """Any JSONL/CSV/JSON file: every record's `prompt_field`, all with the given label."""
    if label not in ("harmful", "benign"):
        raise DataError(f"--label must be harmful or benign, not {label!r}.")
    out = []
    for i, r in read_records(path):
        text = r.get(prompt_field)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{i}: missing or empty field {prompt_field!r} (fields: {', '.join(r)}).")
        out.append(EvalPrompt(text, label, Path(path).stem, f"{path}:{i}"))
    return out
