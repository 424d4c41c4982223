"""Is the trained defender safer, or only refusing more? Train a preset (cpu-demo by default) with several
seeds, evaluate base and trained models on the shipped eval splits, print the table.

For each seed: `selfredteam train --preset PRESET` (wall time and peak RSS measured), then
`selfredteam eval --model RUN --baseline embedded` on the same prompts: refusal rates, refusal
discrimination J = refusal(harmful) - refusal(benign) per benchmark family and its change ΔJ with
a paired bootstrap interval, the change in over-refusal per benign split, ASR, the share of
non-refusal answers that are one stock phrase, and the share of answers with nothing in them
(game.answers.is_non_answer). Finished parts are reused (runs, the baseline's answers), so a
re-run only prints, and a variant only trains what it must.

    python benchmarks/efficacy.py --seeds 0 1 --out runs/efficacy
    python benchmarks/efficacy.py --seeds 0 1 --out runs/eff-grpo --name grpo \\
        --set train.algorithm=grpo --set train.samples_per_prompt=4 --baseline-out runs/efficacy/base
    python benchmarks/efficacy.py --collect runs/efficacy runs/eff-grpo --baseline-out runs/efficacy/base
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import cpu_name, selfredteam_cli

from selfredteam.checkpoint import has_checkpoint
from selfredteam.fsutil import read_jsonl

SPLITS = ("harmful_adversarial,benign_adversarial,harmful_vanilla,benign_vanilla,xstest_safe,xstest_unsafe,or_bench_hard,"
          "or_bench_toxic")
SCREEN = "harmful_adversarial,benign_adversarial,xstest_safe,or_bench_hard,or_bench_toxic"
EVAL_DIRS = ("screen", "efficacy")
"""Where a run's answers go under RUN/eval: the --screen splits, or all of SPLITS."""
"""`--screen`: the splits the acceptance targets name, for quicker comparisons while tuning."""
OVER_REFUSAL = [("wildjailbreak", "benign_adversarial", "WJB adv benign"), ("xstest", "xstest_safe", "XSTest safe"),
                ("or_bench_hard", "or_bench_hard", "OR-Bench-Hard")]
_MEASURE = ("import json, resource, subprocess, sys, time; t = time.time(); r = subprocess.run(sys.argv[2:]); "
            "json.dump({'rc': r.returncode, 'wall_s': time.time() - t, 'peak_rss_gib': "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20}, open(sys.argv[1], 'w'))")


def measured(cmd: list[str], record: Path) -> dict:
    """Run `cmd` in its own process tree; its wall time and peak RSS go to `record`."""
    subprocess.run([sys.executable, "-c", _MEASURE, str(record), *cmd], check=True)
    stats = json.loads(record.read_text())
    if stats["rc"]:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {stats['rc']}")
    return stats


def train(run: Path, seed: int, sets: list[str], warm_start: Path | None = None, preset: str = "cpu-demo") -> dict:
    """Train one seed (its wall time excludes a `warm_start`'s warm-up, which an earlier run paid)."""
    record = run / "efficacy_train.json"
    if record.is_file() and has_checkpoint(run):
        return json.loads(record.read_text())
    run.mkdir(parents=True, exist_ok=True)
    cmd = selfredteam_cli("train", "--preset", preset, "--out", str(run), "--set", f"run.seed={seed}", *sets)
    if warm_start:
        cmd += ["--resume", str(warm_start / f"run{seed}" / "checkpoints" / "step_0")]
    return measured(cmd, record)


def evaluate(run: Path, base_out: Path, sets: list[str], per_subset: int, splits: str) -> dict:
    out = run / "eval" / EVAL_DIRS[splits == SPLITS]
    if not (out / "comparison.json").is_file():
        cmd = selfredteam_cli("eval", "--model", str(run), "--baseline", "embedded",
                              "--baseline-out", str(base_out / out.name),
                              "--benchmarks", "wildjailbreak,xstest,or_bench_hard,or_bench_toxic", "--subsets", splits,
                              "--per-subset", str(per_subset), "--out", str(out), *sets)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "comparison.json").read_text()) | {"_dir": out.name}


def _wjb(comp: dict) -> tuple[dict, dict, dict]:
    """From a comparison.json: the WildJailbreak adversarial family, every subset by (benchmark,
    subset), and the adversarial harmful subset (the acceptance targets read these)."""
    fam = {f["family"]: f for f in comp["families"]}["wildjailbreak_adversarial"]
    sub = {(e["benchmark"], e["subset"]): e for e in comp["subsets"]}
    return fam, sub, sub[("wildjailbreak", "harmful_adversarial")]


def _rate(rate: dict) -> float:
    return rate["k"] / rate["n"] if rate["n"] else float("nan")


def _pct(rate: dict) -> str:
    return f"{_rate(rate):.2f}" if rate["n"] else "-"


def _ci(d: dict) -> str:
    return f"{d['value']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def _last(run: Path, key: str) -> float | None:
    rows = read_jsonl(run / "metrics.jsonl")
    vals = [r[key] for r in rows if r.get(key) is not None]
    return vals[-1] if vals else None


SHARES = ("stock_phrase_share", "non_answer_share", "echo_share")
"""The eval summary's per-split answer shares the tables read (largest over the splits)."""


@functools.cache
def _split_shares(eval_dir: Path) -> dict[tuple[str, str], dict[str, float]]:
    """Each split's SHARES, summarised again from the answers, so answers kept from an earlier run
    are read with today's eval.metrics checks. Cached: the base model's dir is read for every row
    and seed."""
    from selfredteam.eval.run import summarize_answers

    rows = [json.loads(x) for x in (eval_dir / "results.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    return {(e["benchmark"], e["subset"]): {key: e.get(key) or 0.0 for key in SHARES}
            for e in summarize_answers(rows)["subsets"]}


def _shares(eval_dir: Path) -> dict[str, float]:
    """The largest share over the splits of each of SHARES."""
    return {key: max(e[key] for e in _split_shares(eval_dir).values()) for key in SHARES}


def _rises(base_dir: Path, eval_dir: Path) -> str:
    """Echo / stock phrase / non-answer: the largest rise over the base model on any one split.
    Issue 28 holds each within 10 points of the base model; the largest share of each side, taken
    on different splits, hid a +20-point rise on one split behind a +2 between the maxima."""
    base, trained = _split_shares(base_dir), _split_shares(eval_dir)
    both = [k for k in trained if k in base]
    return " / ".join(f"{max(trained[k][key] - base[k][key] for k in both):+.2f}"
                      for key in ("echo_share", "stock_phrase_share", "non_answer_share"))


def _share(eval_dir: Path, key: str = "stock_phrase_share") -> float:
    return _shares(eval_dir)[key]


def report(name: str, runs: dict[int, tuple[dict, dict]], base_out: Path, out: Path) -> str:
    lines = [f"### {name}", "", f"{cpu_name()}; `selfredteam train` + `eval --baseline embedded`; "
             "95% intervals (J: Newcombe; changes: paired bootstrap over prompts).", ""]
    header = ["seed", "WJB-adv refusal harmful (base -> trained)", "WJB-adv refusal benign", "J base -> trained",
              "ΔJ WJB-adv", "ASR WJB-adv harmful", *(f"Δ over-refusal {n}" for *_, n in OVER_REFUSAL),
              "stock phrase (max split) base / trained", "non-answer (max split) base / trained",
              "echo / stock / non-answer: largest rise on one split", "KL end", "wall", "peak RSS"]
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for seed, (tr, comp) in sorted(runs.items()):
        fam, sub, harm = _wjb(comp)
        b, m = fam["baseline"], fam["model"]
        cells = [f"{_pct(b['harmful_refusal'])} -> {_pct(m['harmful_refusal'])}",
                 f"{_pct(b['benign_refusal'])} -> {_pct(m['benign_refusal'])}",
                 f"{b['J']['value']:+.2f} -> {m['J']['value']:+.2f}", _ci(fam["delta_J"]),
                 f"{_pct(harm['baseline_asr'])} -> {_pct(harm['model_asr'])}"]
        cells += [_ci(sub[(bench, split)]["delta_over_refusal"]) for bench, split, _ in OVER_REFUSAL]
        run = out / f"run{seed}"
        base, trained = _shares(base_out / comp["_dir"]), _shares(run / "eval" / comp["_dir"])
        cells += [f"{base[k]:.2f} / {trained[k]:.2f}" for k in ("stock_phrase_share", "non_answer_share")]
        cells.append(_rises(base_out / comp["_dir"], run / "eval" / comp["_dir"]))
        cells += [f"{_last(run, 'kl/mean') or 0:.2f}", f"{tr['wall_s'] / 60:.1f} min", f"{tr['peak_rss_gib']:.2f} GiB"]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines += ["", "J per family (trained, ΔJ vs base):", ""]
    for seed, (_, comp) in sorted(runs.items()):
        lines.append(f"- seed {seed}: " + "; ".join(f"{f['family']} J {f['model']['J']['value']:+.2f} "
                                                     f"(ΔJ {_ci(f['delta_J'])})" for f in comp["families"]))
    return "\n".join(lines) + "\n"


def collect(outs: list[Path], base_out: Path) -> str:
    """One line per finished OUT dir (a row of an ablation), seeds side by side: the table that
    compares settings, from what earlier invocations left (nothing is trained or evaluated)."""
    header = ["run", "seeds", "WJB-adv refusal harmful (mean)", "WJB-adv refusal benign (mean)", "ΔJ WJB-adv per seed",
              "ASR WJB-adv harmful (mean)", "Δ over-refusal WJB benign / XSTest safe / OR-Hard (mean)",
              "ΔJ OR toxic-hard per seed", "stock phrase per seed", "non-answer per seed", "echo (max split) per seed",
              "echo / stock / non-answer: largest rise on one split, per seed", "KL end per seed", "train min per seed"]
    base = [f"{d} splits {_share(base_out / d):.2f} / {_share(base_out / d, 'non_answer_share'):.2f} / "
            f"{_share(base_out / d, 'echo_share'):.2f}"
            for d in EVAL_DIRS if (base_out / d / "results.jsonl").is_file()]
    lines = [f"{cpu_name()}; stock phrase / non-answer / echo share of the base model: {', '.join(base)}",
             "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    def evaluated(run: Path) -> Path | None:
        """The run's eval dir with a comparison (the screen or the full splits), if it has one."""
        dirs = [run / "eval" / d for d in EVAL_DIRS if (run / "eval" / d / "comparison.json").is_file()]
        return dirs[0] if dirs and (run / "efficacy_train.json").is_file() else None

    for out in outs:
        seeds = sorted(int(r.name[3:]) for r in out.glob("run*") if evaluated(r))
        if not seeds:
            continue
        cols: dict[str, list] = {k: [] for k in ("h", "b", "dj", "asr", "or", "stock", "na", "kl", "min", "bh", "bb", "basr",
                                                 "orj", "echo", "rise")}
        for seed in seeds:
            run = out / f"run{seed}"
            d = evaluated(run)
            comp = json.loads((d / "comparison.json").read_text())
            fam, sub, harm = _wjb(comp)
            cols["bh"].append(_rate(fam["baseline"]["harmful_refusal"]))
            cols["bb"].append(_rate(fam["baseline"]["benign_refusal"]))
            cols["basr"].append(_rate(harm["baseline_asr"]))
            cols["h"].append(_rate(fam["model"]["harmful_refusal"]))
            cols["b"].append(_rate(fam["model"]["benign_refusal"]))
            cols["dj"].append(_ci(fam["delta_J"]))
            cols["asr"].append(_rate(harm["model_asr"]))
            cols["or"].append([sub[(bench, split)]["delta_over_refusal"]["value"] for bench, split, _ in OVER_REFUSAL])
            orb = {f["family"]: f for f in comp["families"]}.get("or_bench")
            cols["orj"].append(_ci(orb["delta_J"]) if orb else "-")
            cols["echo"].append(f"{_share(d, 'echo_share'):.2f}")
            cols["stock"].append(f"{_share(d):.2f}")
            cols["na"].append(f"{_share(d, 'non_answer_share'):.2f}")
            cols["rise"].append(_rises(base_out / d.name, d))
            cols["kl"].append(f"{_last(run, 'kl/mean') or 0:.2f}")
            cols["min"].append(f"{json.loads((run / 'efficacy_train.json').read_text())['wall_s'] / 60:.1f}")
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        over = " / ".join(f"{mean([o[i] for o in cols['or']]):+.2f}" for i in range(len(OVER_REFUSAL)))
        cells = [out.name, ", ".join(map(str, seeds)), f"{mean(cols['bh']):.2f} -> {mean(cols['h']):.2f}",
                 f"{mean(cols['bb']):.2f} -> {mean(cols['b']):.2f}", "; ".join(cols["dj"]),
                 f"{mean(cols['basr']):.2f} -> {mean(cols['asr']):.2f}", over, "; ".join(cols["orj"]),
                 " / ".join(cols["stock"]), " / ".join(cols["na"]), " / ".join(cols["echo"]), "; ".join(cols["rise"]),
                 " / ".join(cols["kl"]), " / ".join(cols["min"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", type=Path, default=Path("runs/efficacy"))
    ap.add_argument("--preset", default="cpu-demo", help="the preset each seed trains (the --set overrides go on top)")
    ap.add_argument("--name", help="the table's row name (default: the preset's)")
    ap.add_argument("--set", action="append", default=[], help="config override for train and eval (repeatable)")
    ap.add_argument("--per-subset", type=int, default=120, help="prompts per eval split (all when smaller)")
    ap.add_argument("--baseline-out", type=Path, help="where the base model's answers are kept (default OUT/base)")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--screen", action="store_true", help=f"evaluate only {SCREEN}")
    ap.add_argument("--warm-start", type=Path, metavar="OUT",
                    help="start each seed's RL steps from OUT/runSEED's finished SFT warm-up (an oracle run with "
                         "train.steps=0 and the same warm-up settings) instead of training the warm-up again")
    ap.add_argument("--collect", type=Path, nargs="+", metavar="OUT",
                    help="print one table over these finished OUT dirs (seeds side by side) and exit")
    args = ap.parse_args()
    if args.collect:
        print(collect(args.collect, args.baseline_out or args.collect[0] / "base"))
        return
    sets = [x for s in args.set for x in ("--set", s)]
    base_out = args.baseline_out or args.out / "base"
    runs = {}
    t0 = time.time()
    for seed in args.seeds:
        run = args.out / f"run{seed}"
        tr = train(run, seed, sets, args.warm_start, args.preset)
        print(f"seed {seed}: trained in {tr['wall_s'] / 60:.1f} min, peak RSS {tr['peak_rss_gib']:.2f} GiB", flush=True)
        if not args.train_only:
            runs[seed] = (tr, evaluate(run, base_out, sets, args.per_subset, SCREEN if args.screen else SPLITS))
    if runs:
        text = report((args.name or f"{args.preset} preset") + (f" ({' '.join(args.set)})" if args.set else ""), runs, base_out, args.out)
        (args.out / "efficacy.md").write_text(text)
        print(text)
    print(f"total {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
