"""`selfredteam` command line: one entry point, a subcommand per job.

Errors a user can cause are printed as one paragraph (what, where, what to do) with a non-zero
exit code and no traceback; `--debug` (or SELFREDTEAM_DEBUG=1) shows the traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from selfredteam.config import Config, ModelConfig, load_config, save_config, valid_keys
from selfredteam.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Online self-play red-teaming: one model attacks and defends, a judge scores.")
judge_app = typer.Typer(no_args_is_help=True, help="Fit and evaluate safety judges.")
app.add_typer(judge_app, name="judge")
console = Console(stderr=True)
# Tables go to stdout; when piped (CI logs, files) rich would squeeze them to 80 columns.
out_console = Console(width=None if sys.stdout.isatty() else 140)

PresetOpt = Annotated[str, typer.Option("--preset", "-p", help="cpu-demo | single-gpu | paper-8b")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML file of overrides.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override: section.key=value (repeatable).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]


class _WarningHandler(logging.Handler):
    """Warnings of the `selfredteam` logger (input budgets, seed pools) as one console paragraph."""

    def emit(self, record: logging.LogRecord) -> None:
        console.print(f"[yellow]warning:[/] {escape(record.getMessage())}", highlight=False)


@app.callback()
def _setup() -> None:
    logger = logging.getLogger("selfredteam")
    if not any(isinstance(h, _WarningHandler) for h in logger.handlers):
        logger.addHandler(_WarningHandler(logging.WARNING))
        logger.setLevel(logging.INFO)


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn UserError and Ctrl-C into a clear message and exit code, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug") or os.environ.get("SELFREDTEAM_DEBUG") == "1"
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            if debug:
                raise
            # Escaped: messages quote config sections like [model], which rich would eat as markup.
            console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]Interrupted.[/] Outputs written so far are kept.")
            raise typer.Exit(130) from None

    return wrapper


def _config(preset: str, config: Path | None, sets: list[str] | None) -> Config:
    return load_config(preset, config, sets or [])


def _announce_runtime(model: ModelConfig, threads: int, out: Path | None = None) -> dict[str, Any]:
    """Print the device and dtype (and why) at start; save them as OUT/runtime.json."""
    from selfredteam.runtime import describe, runtime_info, save_runtime

    info = runtime_info(model, threads)
    console.print(f"Running on {describe(info)}.", highlight=False)
    if out is not None:
        save_runtime(out, info)
    return info


def _warn_truncations(*holders: Any) -> dict[str, int]:
    """After a command: one warning line per input budget that cut something; the counts."""
    counts = {}
    for h in holders:
        counter = getattr(h, "truncation", None)
        if counter is None:
            continue
        counts[f"truncated/{counter.what.replace(' ', '_')}s"] = counter.count
        if counter.summary():
            console.print(f"[yellow]warning:[/] {escape(counter.summary())}", highlight=False)
    return counts


@app.command()
@friendly_errors
def play(
    preset: PresetOpt = "cpu-demo",
    games: Annotated[int, typer.Option("--games", "-n", help="Number of games to play.")] = 8,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output dir (games.jsonl, summary.json, config.yaml).")] = Path("runs/play"),
    seeds: Annotated[str | None, typer.Option("--seeds", help="Seed file (.jsonl/.csv/.json) or HF dataset name.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Play real self-play games (attacker revises, defender answers, judge labels) and save them."""
    from selfredteam.data import load_pool, missing_class, sample_batch
    from selfredteam.game.play import play_games, summarize
    from selfredteam.judges import build_judge
    from selfredteam.policy import build_policy
    from selfredteam.policy.base import MeteredPolicy, sampling_params

    overrides = list(set_ or []) + ([f"data.seeds={seeds}"] if seeds else [])
    cfg = _config(preset, config, overrides)
    if games < 1:
        raise UserError("--games must be at least 1.")
    # Cheap checks first: a bad seed file or judge URL fails before any model loads.
    pool = load_pool(cfg.data)
    if problem := missing_class(pool, cfg.game.harmful_fraction, cfg.data.seeds):
        logging.getLogger("selfredteam").warning(problem)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    _announce_runtime(cfg.model, cfg.run.threads, out)
    with console.status("Loading judge..."):
        judge = build_judge(cfg.judge)
        if cfg.judge.backend == "openai" and cfg.judge.kind == "wildguard":
            judge.judge([("Hello", "Hi! How can I help?")])  # preflight: fail fast if unreachable
    with console.status(f"Loading policy {cfg.model.name_or_path}..."):
        policy = MeteredPolicy(build_policy(cfg))
    rng = random.Random(cfg.run.seed)
    batch = sample_batch(pool, games, cfg.game.harmful_fraction, rng)
    t0 = time.perf_counter()
    with console.status(f"Playing {len(batch)} games..."):
        records = play_games(
            batch, policy, judge, rules=cfg.game,
            attacker_params=sampling_params(cfg.generation, "attacker", cfg.game.cot),
            defender_params=sampling_params(cfg.generation, "defender", cfg.game.cot),
            rng=rng,
        )
    wall = time.perf_counter() - t0
    with open(out / "games.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
    summary = summarize(records) | {"perf/tokens_per_s": policy.tokens_per_s, "perf/generated_tokens": policy.tokens,
                                    "timing/generate_s": policy.seconds, "timing/total_s": wall}
    summary |= _warn_truncations(policy, judge)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_summary(summary, out)


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    t = Table(title="Self-play games", show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in summary.items():
        if k != "outcomes":
            t.add_row(k, _fmt(v))
    for k, v in summary["outcomes"].items():
        t.add_row(f"outcome/{k}", str(v))
    out_console.print(t)
    console.print(f"Outputs in {out}.")


@app.command()
@friendly_errors
def train(
    preset: PresetOpt = "cpu-demo",
    out: Annotated[Path, typer.Option("--out", "-o", help="Run dir: metrics.jsonl, games/, checkpoints/, config.yaml.")] = Path("runs/train"),
    resume: Annotated[Path | None, typer.Option(help="Continue from a run dir or checkpoints/step_N.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    wandb_project: Annotated[str | None, typer.Option(help="Also log to Weights & Biases (needs wandb).")] = None,
    debug: DebugOpt = False,
) -> None:
    """Online self-play RL: play with the current policy, judge, update both roles, repeat."""
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from selfredteam.rl.loop import train as run_training

    cfg = _config(preset, config, set_)
    columns = [TextColumn("[bold]step {task.completed}/{task.total}"), BarColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.description}")]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("starting (loading model and judge)...", total=cfg.train.steps)

        def on_step(step: int, total: int, m: dict[str, Any]) -> None:
            desc = (f"R_att {_fmt(m.get('reward/attacker_mean'))} R_def {_fmt(m.get('reward/defender_mean'))} "
                    f"refuse|harm {_fmt(m.get('game/defender_correct_refusal'))} "
                    f"cot_viol {_fmt(m.get('cot/violation_rate'))} kl {_fmt(m.get('kl/mean'))} "
                    f"{m['timing/step_s']:.0f}s/step")
            bar.update(task, completed=step, description=desc)

        last = run_training(cfg, out, resume=resume, wandb_project=wandb_project, log=console.print,
                            progress=on_step)
    console.print(f"Done. Metrics in {out / 'metrics.jsonl'}, checkpoints in {out / 'checkpoints'}.")
    if last:
        _print_kv("Last step", last)


@app.command("self-distill")
@friendly_errors
def self_distill_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write (prompt, response, thought).")],
    preset: PresetOpt = "cpu-demo",
    seeds: Annotated[int, typer.Option("--seeds", "-n", help="Vanilla seeds to answer (half harmful).")] = 96,
    max_per_phrase: Annotated[int, typer.Option(help="Keep at most this many replies with the same first sentence (0 = no cap).")] = 2,
    revise: Annotated[bool, typer.Option(help="Also keep each row under the model's own attacker revision of its prompt (adversarial framings).")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Write an auxiliary SFT set from the model's own judge-approved direct replies (for train.sft_data).

    The policy answers vanilla seeds without CoT; replies the judge scores as the right defence
    (harmful refused, benign answered unharmfully) are kept, balanced, and post-filled with a
    short thought so they train the CoT format. See README "Warm-starting refusals".
    """
    from selfredteam.data import load_pool, missing_class, sample_batch
    from selfredteam.fsutil import write_text_atomic
    from selfredteam.judges import build_judge
    from selfredteam.policy import build_policy
    from selfredteam.policy.base import sampling_params
    from selfredteam.rl.sft import add_revisions, self_distill

    cfg = _config(preset, config, list(set_ or []))
    if seeds < 2:
        raise UserError("--seeds must be at least 2.")
    pool = load_pool(cfg.data)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a .jsonl file path.")
    if problem := missing_class(pool, cfg.game.harmful_fraction, cfg.data.seeds):
        logging.getLogger("selfredteam").warning(problem)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = _announce_runtime(cfg.model, cfg.run.threads)
    with console.status("Loading judge..."):
        judge = build_judge(cfg.judge)
    with console.status(f"Loading policy {cfg.model.name_or_path}..."):
        policy = build_policy(cfg)
    rng = random.Random(cfg.run.seed)
    batch = sample_batch(pool, seeds, cfg.game.harmful_fraction, rng)
    with console.status(f"Answering {len(batch)} seeds..."):
        rows = self_distill(batch, policy, judge, sampling_params(cfg.generation, "defender", False), rng,
                            max_per_phrase=max_per_phrase)
    if revise and rows:
        with console.status(f"Revising {len(rows)} prompts with the attacker..."):
            rows += add_revisions(rows, policy, judge, sampling_params(cfg.generation, "attacker", False))
    _warn_truncations(policy, judge)
    if not rows:
        raise UserError(f"No reply of {len(batch)} was both a judged refusal of a harmful seed and one "
                        "judged answer of a benign one; try more --seeds.")
    write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_text_atomic(out.with_suffix(".runtime.json"), json.dumps(info, indent=2) + "\n")
    refusals = sum(r["label"] == "harmful" for r in rows)
    console.print(f"Kept {len(rows)} rows from {len(batch)} seeds ({refusals} refusals, {len(rows) - refusals} "
                  f"answers; {sum(bool(r.get('revised')) for r in rows)} of them under an attacker revision) in {out}.")


@app.command()
@friendly_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A run dir or checkpoints/step_N dir from `train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the merged HF model dir.")],
    debug: DebugOpt = False,
) -> None:
    """Write a merged Hugging Face model dir (safetensors) loadable by transformers and vLLM."""
    from selfredteam.rl.export import export_merged

    path = export_merged(checkpoint, out)
    console.print(f"Wrote merged model to {path}")


@app.command("eval")
@friendly_errors
def eval_cmd(
    model: Annotated[str, typer.Option(help="embedded | HF id/dir/.gguf | a `train` run or checkpoint dir | openai:URL[#model]")] = "embedded",
    benchmarks: Annotated[str, typer.Option(help="Comma-separated names (see --list).")] = "xstest,wildjailbreak",
    benchmark_path: Annotated[list[str] | None, typer.Option(help="NAME=PATH: load a benchmark from its original file.")] = None,
    benchmark_file: Annotated[Path | None, typer.Option(help="Any JSONL/CSV/JSON of prompts (with --prompt-field, --label).")] = None,
    prompt_field: str = "prompt",
    label: Annotated[str, typer.Option(help="harmful | benign, for --benchmark-file.")] = "harmful",
    limit: Annotated[int | None, typer.Option(help="At most this many prompts per benchmark (stratified by subset).")] = None,
    per_subset: Annotated[int | None, typer.Option(help="At most this many prompts per subset (seeded sample), e.g. all 65 WildJailbreak adversarial-benign prompts next to 120 of its 500 harmful ones.")] = None,
    subsets: Annotated[str | None, typer.Option(help="Only these subsets (comma-separated, e.g. harmful_adversarial,benign_adversarial,xstest_safe).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write results.jsonl (per prompt) and summary.json here; reused on re-runs.")] = None,
    baseline: Annotated[str | None, typer.Option(help="A second model (same forms as --model, e.g. embedded) to compare against: J, delta J, delta over-refusal.")] = None,
    baseline_out: Annotated[Path | None, typer.Option(help="Where the baseline's answers are kept and reused (default OUT/baseline).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the benchmarks and exit.")] = False,
    preset: PresetOpt = "cpu-demo",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Safety and over-refusal of a model on benchmarks, with 95% Wilson intervals.

    With --baseline, both models answer the same prompts and the change is reported: refusal
    discrimination J = harmful refusal - benign refusal per benchmark family, delta J, delta
    over-refusal and delta ASR with paired 95% bootstrap intervals (OUT/comparison.json).
    """
    import gc

    from selfredteam.eval.benchmarks import BENCHMARKS, generic_prompts, load_benchmark
    from selfredteam.eval.run import (
        eval_model_config,
        evaluate_model,
        select_prompts,
        stratified_sample,
        summarize,
    )
    from selfredteam.judges import build_judge

    if list_:
        for b in BENCHMARKS.values():
            print(f"{b.name:20s} {b.description}" + (" [shipped]" if b.shipped else ""))
        return
    cfg = _config(preset, config, set_)
    paths = dict(x.split("=", 1) for x in (benchmark_path or []) if "=" in x)
    sets = {}
    if benchmark_file:
        sets[benchmark_file.stem] = stratified_sample(generic_prompts(str(benchmark_file), prompt_field, label), limit)
    else:
        for name in [b.strip() for b in benchmarks.split(",") if b.strip()]:
            sets[name] = stratified_sample(load_benchmark(name, paths.get(name)), limit, cfg.run.seed)
    sets = select_prompts(sets, subsets.split(",") if subsets else None, per_subset, cfg.run.seed)
    if out:
        out.mkdir(parents=True, exist_ok=True)
    _announce_runtime(eval_model_config(model, cfg), cfg.run.threads, out)
    with console.status("Loading judge..."):
        judge = build_judge(cfg.judge)
    n = sum(map(len, sets.values()))
    with console.status(f"Loading {model}, answering and judging {n} prompts..."):
        rows, policy = evaluate_model(model, cfg, judge, sets, out)
    _warn_truncations(policy, judge)
    summary = summarize(rows)
    if out:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_eval(f"Safety eval: {model} (judge {judge.judge_id}, CoT {'on' if cfg.game.cot else 'off'})", summary)
    if baseline:
        del policy
        gc.collect()  # one model in memory at a time
        base_out = baseline_out or (out / "baseline" if out else None)
        with console.status(f"Baseline {baseline}: answering and judging {n} prompts..."):
            base_rows, base_policy = evaluate_model(baseline, cfg, judge, sets, base_out)
        _warn_truncations(base_policy)
        if base_out:
            (base_out / "summary.json").write_text(json.dumps(summarize(base_rows), indent=2))
        from selfredteam.eval.compare import compare_models

        comparison = {"model": model, "baseline": baseline} | compare_models(rows, base_rows, seed=cfg.run.seed)
        if out:
            (out / "comparison.json").write_text(json.dumps(comparison, indent=2))
        _print_comparison(comparison)
    if out:
        console.print(f"Wrote {out / 'results.jsonl'} and {out / 'summary.json'}"
                      + (f" and {out / 'comparison.json'}." if baseline else "."))


def _print_eval(title: str, summary: dict[str, Any]) -> None:
    from selfredteam.eval.metrics import Rate

    t = Table(title=title)
    for col in ("benchmark", "subset", "n", "ASR (harmful)", "refusal", "compliance (benign)", "over-refusal",
                "stock phrase", "parse err"):
        t.add_column(col)
    for e in summary["subsets"]:
        cells = [str(Rate(**e[k])) if k in e else "" for k in ("asr", "refusal_rate", "compliance_rate", "over_refusal_rate")]
        stock = "-" if e.get("stock_phrase_share") is None else f"{e['stock_phrase_share']:.2f}"
        t.add_row(e["benchmark"], e["subset"], str(e["n"]), *cells, stock, str(e["parse_errors"]))
    out_console.print(t)


def _print_comparison(c: dict[str, Any]) -> None:
    from selfredteam.eval.compare import fmt_interval

    t = Table(title=f"Refusal discrimination J = refusal(harmful) - refusal(benign): {c['model']} vs {c['baseline']}")
    for col in ("family", "n harm/benign", "baseline refusal h / b", "model refusal h / b", "J baseline", "J model",
                "delta J [95%]", "delta over-refusal [95%]"):
        t.add_column(col)
    for f in c["families"]:
        b, m = f["baseline"], f["model"]
        rates = [f"{x['harmful_refusal']['k'] / x['harmful_refusal']['n']:.2f} / "
                 f"{x['benign_refusal']['k'] / x['benign_refusal']['n']:.2f}" for x in (b, m)]
        t.add_row(f["family"], f"{f['n_harmful']}/{f['n_benign']}", *rates, fmt_interval(b["J"]), fmt_interval(m["J"]),
                  fmt_interval(f["delta_J"]), fmt_interval(f["delta_over_refusal"]))
    out_console.print(t)
    s = Table(title="Change per subset (paired bootstrap, 95%)")
    for col in ("benchmark", "subset", "n", "delta refusal / over-refusal", "delta ASR"):
        s.add_column(col)
    for e in c["subsets"]:
        d = e.get("delta_refusal") or e.get("delta_over_refusal")
        s.add_row(e["benchmark"], e["subset"], str(e["n_paired"]), fmt_interval(d) if d else "-",
                  fmt_interval(e["delta_asr"]) if "delta_asr" in e else "")
    out_console.print(s)


@app.command()
@friendly_errors
def diversity(
    run: Annotated[Path, typer.Argument(help="A `train` run dir (reads games/step_N.jsonl) or an `attack` output dir.")],
    last_steps: Annotated[int | None, typer.Option(help="Only the last N steps' games.")] = None,
    debug: DebugOpt = False,
) -> None:
    """Attack diversity: SBERT similarity / diversity and Self-BLEU of the attacker's prompts."""
    from selfredteam.eval.diversity import attacks_from_run, diversity_report

    if (run / "attacks.jsonl").is_file():
        attacks = [json.loads(x) for x in (run / "attacks.jsonl").read_text().splitlines()]
    else:
        attacks = attacks_from_run(run, last_steps)
    _print_kv("Attack diversity", diversity_report(attacks))


@app.command()
@friendly_errors
def attack(
    model: Annotated[str, typer.Option(help="Attacker: embedded | HF id/dir | a `train` run or checkpoint dir | openai:URL[#model]")] = "embedded",
    n: Annotated[int, typer.Option("--n", help="How many seeds to revise.")] = 16,
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("runs/attack"),
    seeds: Annotated[str | None, typer.Option("--seeds", help="Seed file or HF name (default: shipped pool).")] = None,
    preset: PresetOpt = "cpu-demo",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Red-team on demand: revise seeds into attacks with a (trained) attacker; writes attacks.jsonl."""
    from selfredteam.data import load_pool, sample_batch
    from selfredteam.eval.diversity import diversity_report, generate_attacks
    from selfredteam.eval.run import build_eval_policy, eval_model_config
    from selfredteam.policy.base import sampling_params

    cfg = _config(preset, config, list(set_ or []) + ([f"data.seeds={seeds}"] if seeds else []))
    pool = load_pool(cfg.data)
    batch = sample_batch(pool, n, cfg.game.harmful_fraction, random.Random(cfg.run.seed))
    out.mkdir(parents=True, exist_ok=True)
    _announce_runtime(eval_model_config(model, cfg), cfg.run.threads, out)
    with console.status(f"Loading attacker {model}..."):
        policy = build_eval_policy(model, cfg)
    with console.status(f"Generating {len(batch)} attacks..."):
        attacks = generate_attacks(policy, batch, cfg.game.cot, sampling_params(cfg.generation, "attacker", cfg.game.cot))
    _warn_truncations(policy)
    save_config(cfg, out)
    with open(out / "attacks.jsonl", "w", encoding="utf-8") as f:
        for a in attacks:
            f.write(json.dumps(a, ensure_ascii=False) + "\n")
    if len(attacks) >= 2:
        _print_kv("Attack diversity", diversity_report(attacks))
    console.print(f"Wrote {out / 'attacks.jsonl'}.")


def _eval_sets(benchmarks: str, paths: list[str] | None, subsets: str | None, per_subset: int | None,
               seed: int) -> dict[str, list]:
    """The prompts every model of a study answers: benchmarks checked before anything trains."""
    from selfredteam.eval.benchmarks import load_benchmark
    from selfredteam.eval.run import select_prompts

    named = dict(x.split("=", 1) for x in (paths or []) if "=" in x)
    sets = {b: load_benchmark(b, named.get(b)) for b in [x.strip() for x in benchmarks.split(",") if x.strip()]}
    return select_prompts(sets, subsets.split(",") if subsets else None, per_subset, seed)


@app.command()
@friendly_errors
def study(
    variants: Annotated[str, typer.Option(help="Comma-separated variants: selfplay, attacker-only, defender-only, no-cot, or your own from --variants-file.")] = "selfplay,attacker-only,defender-only,no-cot",
    seeds: Annotated[str, typer.Option(help="Comma-separated training seeds.")] = "0",
    out: Annotated[Path, typer.Option("--out", "-o", help="Study dir: one run per variant and seed, study.md/json, report/.")] = Path("runs/study"),
    variants_file: Annotated[Path | None, typer.Option(help="YAML: variant name -> {section.key: value} overrides.")] = None,
    benchmarks: Annotated[str, typer.Option(help="Benchmarks the defenders are evaluated on.")] = "wildjailbreak,xstest,or_bench_hard",
    benchmark_path: Annotated[list[str] | None, typer.Option(help="NAME=PATH: load a benchmark from its original file.")] = None,
    subsets: Annotated[str | None, typer.Option(help="Only these subsets.")] = "harmful_adversarial,benign_adversarial,xstest_safe,xstest_unsafe,or_bench_hard",
    per_subset: Annotated[int | None, typer.Option(help="At most this many prompts per subset.")] = 64,
    diversity_seeds: Annotated[int, typer.Option(help="Seeds every attacker revises for the diversity measure.")] = 32,
    exploit_steps: Annotated[int, typer.Option(help="Also run the best-response probe on every defender, with this many steps (0: no).")] = 0,
    preset: PresetOpt = "cpu-demo",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """The paper's comparisons in one command: train each variant x seed with the same budget,
    evaluate defenders (J, ΔJ) and attackers (diversity), optionally the exploit probe; resumable."""
    from rich.progress import BarColumn, Progress, TextColumn

    from selfredteam.eval.report import build_report
    from selfredteam.experiments.study import Study, StudySpec, load_variants, real_tools

    chosen = load_variants([v.strip() for v in variants.split(",") if v.strip()], variants_file)
    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, not {seeds!r}.") from None
    spec = StudySpec(preset, chosen, seed_list, out, config, list(set_ or []), diversity_seeds=diversity_seeds,
                     exploit_steps=exploit_steps)
    for v in chosen:  # every variant's config must load before anything trains
        spec.config(v, seed_list[0])
    spec.eval_sets = _eval_sets(benchmarks, benchmark_path, subsets, per_subset, seed=0)
    out.mkdir(parents=True, exist_ok=True)
    cfg = spec.config(None, seed_list[0])
    _announce_runtime(cfg.model, cfg.run.threads, out)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} phases"),
                  TextColumn("eta {task.fields[eta]}"), console=console) as bar:
        task = bar.add_task("starting", total=None, eta="?")

        def on_phase(name: str, done: int, total: int, eta: float | None) -> None:
            left = "?" if eta is None else f"{eta / 60:.0f} min"
            bar.update(task, description=name, completed=done, total=total, eta=left)

        study_ = Study(spec, real_tools(cfg, log=console.print))
        study_.run(on_phase)
    runs = [study_.run_dir(v, s) for v in chosen for s in seed_list]
    build_report(runs, out / "report", labels=[f"{v.name}/seed{s}" for v in chosen for s in seed_list])
    out_console.print((out / "study.md").read_text())
    console.print(f"Wrote {out / 'study.md'}, {out / 'study.json'} and {out / 'report' / 'report.html'}.")


@app.command()
@friendly_errors
def exploit(
    run: Annotated[Path, typer.Argument(help="A `train` run dir: its defender is the target.")],
    steps: Annotated[int, typer.Option(help="Training steps of each best-response attacker.")] = 8,
    final_seeds: Annotated[int, typer.Option(help="Harmful seeds of the final attack-success measurement.")] = 48,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Default: RUN/exploit.")] = None,
    preset: PresetOpt = "cpu-demo",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Best-response probe: train a fresh attacker against RUN's frozen defender (and the base model);
    the attack success it reaches approximates how exploitable the defender still is."""
    from selfredteam.experiments.exploit import exploit as run_exploit
    from selfredteam.experiments.study import check_runs, real_tools

    check_runs([run])
    if steps < 1 or final_seeds < 1:
        raise UserError("--steps and --final-seeds must be at least 1.")
    cfg = _config(preset, config, set_)
    out = out or run / "exploit"
    out.mkdir(parents=True, exist_ok=True)
    _announce_runtime(cfg.model, cfg.run.threads, out)
    results = run_exploit(run, cfg, out, real_tools(cfg, log=console.print), steps, final_seeds)
    t = Table(title=f"Exploitability (best-response attacker, {steps} steps, {final_seeds} harmful seeds)")
    for col in ("defender", "steps run", "final ASR [95%]", "ASR last 3 training steps"):
        t.add_column(col)
    from selfredteam.eval.metrics import Rate

    for name, r in results.items():
        tail = [a for _, a in r["curve"][-3:] if a is not None]
        rate = Rate(**{k: r["final_asr"][k] for k in ("k", "n", "low", "high")})
        t.add_row(f"{name}: {r['defender']}", str(r["steps_run"]), str(rate), _fmt(sum(tail) / len(tail) if tail else None))
    out_console.print(t)
    console.print(f"Wrote {out / 'exploit.json'} and {out / 'exploit.png'}.")


@app.command()
@friendly_errors
def crossplay(
    runs: Annotated[list[Path], typer.Argument(help="`train` run dirs (the base model is added on both sides).")],
    n: Annotated[int, typer.Option("--n", help="Seeds each attacker revises (half harmful).")] = 48,
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("runs/crossplay"),
    preset: PresetOpt = "cpu-demo",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Every attacker (rows) against every defender (columns): ASR, harmful and benign refusal."""
    from selfredteam.eval.report import crossplay_report
    from selfredteam.experiments.crossplay import crossplay as run_crossplay
    from selfredteam.experiments.study import check_runs, real_tools

    check_runs(runs)
    if n < 2:
        raise UserError("--n must be at least 2 (one harmful and one benign seed).")
    cfg = _config(preset, config, set_)
    out.mkdir(parents=True, exist_ok=True)
    _announce_runtime(cfg.model, cfg.run.threads, out)
    with console.status("Cross-play: attacks, then answers..."):
        result = run_crossplay(runs, cfg, out, real_tools(cfg, log=console.print), n)
    html_path, md_path = crossplay_report(result, out)
    out_console.print(md_path.read_text())
    console.print(f"Wrote {out / 'crossplay.json'} and {html_path}.")


@app.command()
@friendly_errors
def redteam(
    target: Annotated[str, typer.Option(help="The model under test: openai:URL#model (any OpenAI-compatible server), an HF id/dir, `embedded`, or a train run.")],
    attacker: Annotated[str, typer.Option(help="A train run (its attacker), `embedded`, or an HF id/dir.")] = "embedded",
    n: Annotated[int, typer.Option("--n", help="Seeds to attack.")] = 200,
    attempts: Annotated[int, typer.Option(help="Attacks per seed; a seed is broken if any attempt works (best-of-K).")] = 1,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Seed file (default: the shipped harmful pool).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Target answer budget (default generation.defender_max_new_tokens).")] = None,
    system: Annotated[str | None, typer.Option(help="A system prompt for the target (default: none, a plain user turn).")] = None,
    chunk: Annotated[int, typer.Option(help="Attacks answered, judged and saved together (what an outage can cost).")] = 16,
    out: Annotated[Path, typer.Option("--out", "-o", help="results.jsonl, summary.json, report.html; a re-run continues here.")] = Path("runs/redteam"),
    preset: PresetOpt = "cpu-demo",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Red-team any model: the attacker revises seeds, the target answers, the judge labels;
    success per attempt and best-of-K with intervals, and a report. Resumes where it stopped."""
    from selfredteam.eval.report import redteam_report
    from selfredteam.eval.run import eval_model_config
    from selfredteam.experiments.redteam import redteam as run_redteam
    from selfredteam.experiments.study import real_tools

    if min(n, attempts, chunk) < 1:
        raise UserError("--n, --attempts and --chunk must be at least 1.")
    cfg = _config(preset, config, set_)
    out.mkdir(parents=True, exist_ok=True)
    _announce_runtime(eval_model_config(target, cfg), cfg.run.threads, out)
    tools = real_tools(cfg, log=console.print)
    with console.status(f"Red-teaming {target}..."):
        summary = run_redteam(attacker, target, cfg, out, tools, n, attempts, seeds, max_tokens, system, chunk)
    results = [json.loads(x) for x in (out / "results.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    html_path, md_path = redteam_report(summary, results, out)
    out_console.print(md_path.read_text())
    console.print(f"Wrote {out / 'results.jsonl'}, {out / 'summary.json'} and {html_path}.")


def _print_kv(title: str, d: dict[str, Any]) -> None:
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in d.items():
        t.add_row(k, _fmt(v))
    out_console.print(t)


@app.command()
@friendly_errors
def report(
    runs: Annotated[list[Path], typer.Argument(help="One or more `train` run dirs (compared side by side).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write report.html and report.md.")] = Path("runs/report"),
    debug: DebugOpt = False,
) -> None:
    """A self-contained HTML report (curves, eval tables, sample games) plus a Markdown summary."""
    from selfredteam.eval.report import build_report

    html_path, md_path = build_report(runs, out)
    console.print(f"Wrote {html_path} and {md_path}.")


@app.command("config")
@friendly_errors
def show_config(
    preset: PresetOpt = "cpu-demo",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    keys: Annotated[bool, typer.Option("--keys", help="List every valid key.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Print the resolved config (preset <- YAML <- --set) as YAML."""
    import yaml

    from selfredteam.config import to_dict

    if keys:
        print("\n".join(valid_keys()))
        return
    print(yaml.safe_dump(to_dict(_config(preset, config, set_)), sort_keys=False))


@app.command()
@friendly_errors
def setup(debug: DebugOpt = False) -> None:
    """Prepare the embedded model (concatenate, verify, convert to safetensors) and judge, offline."""
    from selfredteam.judges.embedded import EmbeddedJudge
    from selfredteam.policy.embedded import embedded_model_dir

    with console.status("Preparing the embedded model (first time: about a minute)..."):
        path = embedded_model_dir()
    console.print(f"Embedded model ready: {path}")
    with console.status("Loading the embedded judge..."):
        judge = EmbeddedJudge.load()
    console.print(f"Embedded judge ready: {judge.judge_id}")


@judge_app.command("fit")
@friendly_errors
def judge_fit(
    data_dir: Annotated[str | None, typer.Option(help="Shared data dir (default ../shared/data or $SELFREDTEAM_DATA).")] = None,
    out: Annotated[Path, typer.Option(help="Where to write embedded_judge.{safetensors,json}.")] = Path("runs/judge"),
    seed: int = 0,
    debug: DebugOpt = False,
) -> None:
    """Fit the embedded judge's probes (reproducible; writes safetensors + JSON, no pickle)."""
    from selfredteam.judges.fit import find_data_dir, fit_embedded_judge

    meta = fit_embedded_judge(find_data_dir(data_dir), out, seed=seed, log=console.print)
    console.print(f"Wrote {out}: thresholds {meta['thresholds']}. Use it with --set judge.weights={out}")


@judge_app.command("eval")
@friendly_errors
def judge_eval(
    preset: PresetOpt = "cpu-demo",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data_dir: Annotated[str | None, typer.Option(help="Shared data dir (default ../shared/data or $SELFREDTEAM_DATA).")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many items per set.")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the metrics as JSON here.")] = None,
    debug: DebugOpt = False,
) -> None:
    """Precision/recall/F1 per label and the false-positive rate on benign-but-scary prompts."""
    from selfredteam.judges import build_judge
    from selfredteam.judges.evaluate import evaluate_judge
    from selfredteam.judges.fit import find_data_dir

    cfg = _config(preset, config, set_)
    data = find_data_dir(data_dir)
    with console.status("Loading judge..."):
        judge = build_judge(cfg.judge)
    with console.status("Judging eval sets..."):
        res = evaluate_judge(judge, data, limit=limit, seed=cfg.run.seed)
    t = Table(title=f"Judge {judge.judge_id} on held-out data")
    for col in ("label / set", "n", "precision", "recall", "F1", "accuracy", "FPR", "skipped"):
        t.add_column(col, justify="right" if col != "label / set" else "left")

    def row(name: str, m: dict[str, Any]) -> None:
        t.add_row(name, str(m["n"]), *(f"{m[k]:.3f}" for k in ("precision", "recall", "f1", "accuracy", "fpr")),
                  str(m["skipped"]))

    for label in ("prompt_harmful", "response_refusal", "response_harmful"):
        row(label, res[label])
    for name, m in res["per_set"].items():
        row(f"  prompt_harmful: {name}", m)
    out_console.print(t)
    out_console.print(f"False-positive rate on benign-but-scary prompts (XSTest safe, OR-Bench-Hard, "
                    f"WJB adversarial benign): [bold]{res['scary_benign_fpr']:.3f}[/]")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2))


def main() -> None:  # pragma: no cover - console script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
