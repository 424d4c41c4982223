"""Commands that play and train: play, train, self-distill, export, config, setup."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from selfredteam.checkpoint import read_state, resumed_run_dir
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
    print_kv,
    warn_truncations,
)
from selfredteam.config import Config, config_changes, save_config, valid_keys
from selfredteam.errors import UserError
from selfredteam.fsutil import write_jsonl


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
    from selfredteam.game.play import play_games, sampling_params, summarize_games
    from selfredteam.judges import build_judge
    from selfredteam.policy import build_policy
    from selfredteam.policy.base import MeteredPolicy

    overrides = list(set_ or []) + ([f"data.seeds={seeds}"] if seeds else [])
    cfg = config_from(preset, config, overrides)
    if games < 1:
        raise UserError("--games must be at least 1.")
    # Cheap checks first: a bad seed file or judge URL fails before any model loads.
    pool = load_pool(cfg.data)
    if problem := missing_class(pool, cfg.game.harmful_fraction, cfg.data.seeds):
        logging.getLogger("selfredteam").warning(problem)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    announce_runtime(cfg.model, cfg.run.threads, out)
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
    write_jsonl(out / "games.jsonl", [r.to_dict() for r in records])
    summary = summarize_games(records) | {"perf/tokens_per_s": policy.tokens_per_s, "perf/generated_tokens": policy.tokens,
                                    "timing/generate_s": policy.seconds, "timing/total_s": wall}
    summary |= warn_truncations(policy, judge)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_summary(summary, out)


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    t = Table(title="Self-play games", show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in summary.items():
        if k != "outcomes":
            t.add_row(k, fmt(v))
    for k, v in summary["outcomes"].items():
        t.add_row(f"outcome/{k}", str(v))
    out_console.print(t)
    console.print(f"Outputs in {out}.")


def _continue_in_place(resume: Path, cfg: Config) -> Path:
    """`train --resume RUN` without --out: the run dir to continue in, when this command would train the
    same run. A resume takes its config from the command, so without the run's own flags (its preset,
    its --set keys) it would put another run's steps into RUN; that asks for the run's config or --out."""
    run, ckpt = resumed_run_dir(resume)
    if changes := config_changes(read_state(ckpt).get("config", {}), cfg):
        shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise UserError(f"{run} was trained with another config than this command's ({shown}). Continue it with "
                        f"its own config (--config {run / 'config.yaml'}), or pass --out NEW_DIR to train from its "
                        "checkpoint as a new run.")
    return run


@app.command()
@friendly_errors
def train(
    preset: PresetOpt = "cpu-demo",
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Run dir: metrics.jsonl, games/, checkpoints/, config.yaml "
                            "[default: the resumed run's dir with --resume, else runs/train].")] = None,
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

    cfg = config_from(preset, config, set_)
    if out is None:
        out = _continue_in_place(resume, cfg) if resume is not None else Path("runs/train")
    columns = [TextColumn("[bold]step {task.completed}/{task.total}"), BarColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.description}")]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("starting (loading model and judge)...", total=cfg.train.steps)

        def on_step(step: int, total: int, m: dict[str, Any]) -> None:
            desc = (f"R_att {fmt(m.get('reward/attacker_mean'))} R_def {fmt(m.get('reward/defender_mean'))} "
                    f"refuse|harm {fmt(m.get('game/defender_correct_refusal'))} "
                    f"cot_viol {fmt(m.get('cot/violation_rate'))} kl {fmt(m.get('kl/mean'))} "
                    f"{m['timing/step_s']:.0f}s/step")
            bar.update(task, completed=step, description=desc)

        last = run_training(cfg, out, resume=resume, wandb_project=wandb_project, log=console.print,
                            progress=on_step)
    # A run cut short said why when it stopped; the closing line must not call it done.
    head = {"time_limit": "Stopped at the time limit.", "signal": "Stopped."}.get(
        (last or {}).get("run/stop_reason", "done"), "Done.")
    console.print(f"{head} Metrics in {out / 'metrics.jsonl'}, checkpoints in {out / 'checkpoints'}.")
    if last:
        print_kv("Last step", last)


@app.command("self-distill")
@friendly_errors
def self_distill_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write (prompt, response, thought).")],
    preset: PresetOpt = "cpu-demo",
    seeds: Annotated[int, typer.Option("--seeds", "-n", help="Vanilla seeds to answer (half harmful).")] = 96,
    max_per_phrase: Annotated[int, typer.Option(help="Keep at most this many replies with the same first sentence (0 = no cap).")] = 2,
    revise: Annotated[bool, typer.Option(help="Also keep each row under the model's own attacker revision of its prompt (adversarial framings).")] = False,
    model_thoughts: Annotated[bool, typer.Option(
        help="The model writes each row's thought (what the request asks for, whether it is safe to help) "
             "instead of one fixed neutral thought for every row.")] = False,
    rows_from: Annotated[Path | None, typer.Option(
        "--rows", help="Start from this SFT file's rows instead of answering seeds (e.g. to add --model-thoughts).")] = None,
    contrastive: Annotated[bool, typer.Option(
        help="For every seed, the reply its dataset label calls for: the model, told the label, writes a refusal of "
             "each harmful prompt and an answer to each benign one; the judge checks the reply. Resumable.")] = False,
    all_seeds: Annotated[bool, typer.Option(
        "--all", help="Every seed of the pool (data.seeds + data.extra_seeds) instead of --seeds drawn at random.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Write an auxiliary SFT set from the model's own judge-approved direct replies (for train.sft.data).

    The policy answers vanilla seeds without CoT; replies the judge scores as the right defence
    (harmful refused, benign answered unharmfully) are kept, balanced, and post-filled with a
    short thought so they train the CoT format. With --contrastive, every seed gets the reply its
    label calls for (a contrastive set: rl/sft.py contrastive_distill says why), built in chunks
    that a re-run of the same command resumes. See README "Warm-starting refusals".
    """
    from selfredteam.data import load_pool, missing_class
    from selfredteam.fsutil import write_text_atomic
    from selfredteam.judges import build_judge
    from selfredteam.policy import build_policy
    from selfredteam.rl.sft import finish_resumable, load_sft_rows

    cfg = config_from(preset, config, list(set_ or []))
    if seeds < 2:
        raise UserError("--seeds must be at least 2.")
    pool = load_pool(cfg.data)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a .jsonl file path.")
    if problem := missing_class(pool, cfg.game.harmful_fraction, cfg.data.seeds):
        logging.getLogger("selfredteam").warning(problem)
    if rows_from is not None:
        if not rows_from.is_file():
            raise UserError(f"--rows {rows_from} is not a file.")
        load_sft_rows(str(rows_from))  # a clear error for a row without prompt/response, before loading models
    out.parent.mkdir(parents=True, exist_ok=True)
    info = announce_runtime(cfg.model, cfg.run.threads)
    with console.status("Loading judge..."):
        judge = build_judge(cfg.judge)
    with console.status(f"Loading policy {cfg.model.name_or_path}..."):
        policy = build_policy(cfg)
    rows, source = _distilled_rows(cfg, pool, policy, judge, out, seeds, rows_from, contrastive, all_seeds,
                                   model_thoughts, revise, max_per_phrase)
    warn_truncations(policy, judge)
    if not rows:
        raise UserError(f"No reply of {source} was both a judged refusal of a harmful seed and one "
                        "judged answer of a benign one; try more --seeds.")
    write_jsonl(out, rows)
    write_text_atomic(out.with_suffix(".runtime.json"), json.dumps(info, indent=2) + "\n")
    finish_resumable(out)
    refusals = sum(r["label"] == "harmful" for r in rows)
    console.print(f"Kept {len(rows)} rows from {source} ({refusals} refusals, {len(rows) - refusals} "
                  f"answers; {sum(bool(r.get('revised')) for r in rows)} of them under an attacker revision) in {out}.")



def _distilled_rows(cfg: Any, pool: list[Any], policy: Any, judge: Any, out: Path, seeds: int, rows_from: Path | None,
                    contrastive: bool, all_seeds: bool, model_thoughts: bool, revise: bool,
                    max_per_phrase: int) -> tuple[list[dict[str, Any]], str]:
    """self-distill's rows and where they came from: an SFT file's rows, a contrastive set (built
    in resumable chunks, thoughts written chunk by chunk), or the model's own judge-approved
    replies; then attacker revisions and written thoughts when asked."""
    from selfredteam.data import read_records, sample_batch
    from selfredteam.game.play import sampling_params
    from selfredteam.policy.base import SamplingParams
    from selfredteam.rl.sft import (
        THOUGHT_TOKENS,
        add_revisions,
        add_thoughts,
        contrastive_distill,
        distill_resumably,
        self_distill,
    )

    rng = random.Random(cfg.run.seed)
    thought_params = SamplingParams(THOUGHT_TOKENS, cfg.generation.temperature)
    if rows_from is not None:
        rows = [dict(r) for _, r in read_records(str(rows_from))]
        source = f"{rows_from}"
    elif contrastive:
        batch = pool if all_seeds else sample_batch(pool, seeds, cfg.game.harmful_fraction, rng)
        source = f"{len(batch)} seeds"
        params = sampling_params(cfg.generation, "defender", False)

        def make_rows(part: list[Any]) -> tuple[list[dict[str, Any]], int]:
            new, missed = contrastive_distill(part, policy, judge, params)
            if model_thoughts and new:
                new, _ = add_thoughts(new, policy, thought_params)
            return new, missed

        rows, missed = distill_resumably(batch, out, make_rows, log=console.print)
        console.print(f"{missed} of {len(batch)} seeds got no usable reply of their label's kind in 3 samples.")
        model_thoughts = False  # written chunk by chunk above
    else:
        batch = sample_batch(pool, seeds, cfg.game.harmful_fraction, rng)
        source = f"{len(batch)} seeds"
        with console.status(f"Answering {len(batch)} seeds..."):
            rows = self_distill(batch, policy, judge, sampling_params(cfg.generation, "defender", False), rng,
                                max_per_phrase=max_per_phrase)
    if revise and rows:
        with console.status(f"Revising {len(rows)} prompts with the attacker..."):
            rows += add_revisions(rows, policy, judge, sampling_params(cfg.generation, "attacker", False))
    if model_thoughts and rows:
        with console.status(f"Writing a thought for each of {len(rows)} rows..."):
            rows, kept_neutral = add_thoughts(rows, policy, thought_params)
        console.print(f"{len(rows) - kept_neutral} rows got a written thought; {kept_neutral} kept the neutral one "
                      "(no usable sentence).")
    return rows, source


@app.command()
@friendly_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A run dir or checkpoints/step_N dir from `train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the merged HF model dir.")],
    debug: DebugOpt = False,
) -> None:
    """Write a merged Hugging Face model dir (safetensors) loadable by transformers and vLLM."""
    from selfredteam.policy.spec import export_merged

    path = export_merged(checkpoint, out)
    console.print(f"Wrote merged model to {path}")


@app.command("config")
@friendly_errors
def config_cmd(
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
    print(yaml.safe_dump(to_dict(config_from(preset, config, set_)), sort_keys=False))


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
