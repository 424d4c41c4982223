"""Commands that compose training and evaluation: study, exploit, crossplay, redteam."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from selfredteam.cli.common import (
    ConfigOpt,
    DebugOpt,
    PresetOpt,
    SetOpt,
    announce_runtime,
    app,
    config_from,
    console,
    fmt,
    friendly_errors,
    out_console,
)
from selfredteam.errors import UserError
from selfredteam.eval.run import eval_sets
from selfredteam.fsutil import read_jsonl
from selfredteam.policy.spec import eval_model_config


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
    from selfredteam.experiments.study import Study, StudySpec, load_variants
    from selfredteam.experiments.tools import real_tools

    chosen = load_variants([v.strip() for v in variants.split(",") if v.strip()], variants_file)
    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, not {seeds!r}.") from None
    spec = StudySpec(preset, chosen, seed_list, out, config, list(set_ or []), diversity_seeds=diversity_seeds,
                     exploit_steps=exploit_steps)
    for v in chosen:  # every variant's config must load before anything trains
        spec.config(v, seed_list[0])
    spec.eval_sets = eval_sets(benchmarks, benchmark_path, subsets, per_subset, seed=0)
    out.mkdir(parents=True, exist_ok=True)
    cfg = spec.config(None, seed_list[0])
    announce_runtime(cfg.model, cfg.run.threads, out)
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
    from selfredteam.experiments.study import check_runs
    from selfredteam.experiments.tools import real_tools

    check_runs([run])
    if steps < 1 or final_seeds < 1:
        raise UserError("--steps and --final-seeds must be at least 1.")
    cfg = config_from(preset, config, set_)
    out = out or run / "exploit"
    out.mkdir(parents=True, exist_ok=True)
    announce_runtime(cfg.model, cfg.run.threads, out)
    results = run_exploit(run, cfg, out, real_tools(cfg, log=console.print), steps, final_seeds)
    t = Table(title=f"Exploitability (best-response attacker, {steps} steps, {final_seeds} harmful seeds)")
    for col in ("defender", "steps run", "final ASR [95%]", "ASR last 3 training steps"):
        t.add_column(col)
    from selfredteam.eval.metrics import Rate

    for name, r in results.items():
        tail = [a for _, a in r["curve"][-3:] if a is not None]
        rate = Rate(**{k: r["final_asr"][k] for k in ("k", "n", "low", "high")})
        t.add_row(f"{name}: {r['defender']}", str(r["steps_run"]), str(rate), fmt(sum(tail) / len(tail) if tail else None))
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
    from selfredteam.experiments.crossplay import crossplay as run_crossplay
    from selfredteam.experiments.crossplay import crossplay_report
    from selfredteam.experiments.study import check_runs
    from selfredteam.experiments.tools import real_tools

    check_runs(runs)
    if n < 2:
        raise UserError("--n must be at least 2 (one harmful and one benign seed).")
    cfg = config_from(preset, config, set_)
    out.mkdir(parents=True, exist_ok=True)
    announce_runtime(cfg.model, cfg.run.threads, out)
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
    from selfredteam.experiments.redteam import redteam as run_redteam
    from selfredteam.experiments.tools import real_tools

    if min(n, attempts, chunk) < 1:
        raise UserError("--n, --attempts and --chunk must be at least 1.")
    cfg = config_from(preset, config, set_)
    out.mkdir(parents=True, exist_ok=True)
    announce_runtime(eval_model_config(target, cfg), cfg.run.threads, out)
    tools = real_tools(cfg, log=console.print)
    with console.status(f"Red-teaming {target}..."):
        summary = run_redteam(attacker, target, cfg, out, tools, n, attempts, seeds, max_tokens, system, chunk)
    results = read_jsonl(out / "results.jsonl")
    html_path, md_path = redteam_report(summary, results, out)
    out_console.print(md_path.read_text())
    console.print(f"Wrote {out / 'results.jsonl'}, {out / 'summary.json'} and {html_path}.")
