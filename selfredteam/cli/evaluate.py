"""Commands that measure: eval (with --baseline), attack, diversity, report, judge fit/eval."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Annotated, Any

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
    friendly_errors,
    judge_app,
    out_console,
    print_kv,
    warn_truncations,
)
from selfredteam.config import save_config
from selfredteam.fsutil import read_jsonl, write_jsonl
from selfredteam.policy.spec import eval_model_config


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

    from selfredteam.eval.benchmarks import BENCHMARKS
    from selfredteam.eval.run import eval_sets, evaluate_model, summarize_answers
    from selfredteam.judges import build_judge

    if list_:
        for b in BENCHMARKS.values():
            print(f"{b.name:20s} {b.description}" + (" [shipped]" if b.shipped else ""))
        return
    cfg = config_from(preset, config, set_)
    sets = eval_sets(benchmarks, benchmark_path, subsets, per_subset, limit, cfg.run.seed, benchmark_file, prompt_field, label)
    if out:
        out.mkdir(parents=True, exist_ok=True)
    announce_runtime(eval_model_config(model, cfg), cfg.run.threads, out)
    with console.status("Loading judge..."):
        judge = build_judge(cfg.judge)
    n = sum(map(len, sets.values()))
    with console.status(f"Loading {model}, answering and judging {n} prompts..."):
        rows, policy = evaluate_model(model, cfg, judge, sets, out)
    warn_truncations(policy, judge)
    summary = summarize_answers(rows)
    if out:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_eval(f"Safety eval: {model} (judge {judge.judge_id}, CoT {'on' if cfg.game.cot else 'off'})", summary)
    if baseline:
        del policy
        gc.collect()  # one model in memory at a time
        base_out = baseline_out or (out / "baseline" if out else None)
        with console.status(f"Baseline {baseline}: answering and judging {n} prompts..."):
            base_rows, base_policy = evaluate_model(baseline, cfg, judge, sets, base_out)
        warn_truncations(base_policy)
        if base_out:
            (base_out / "summary.json").write_text(json.dumps(summarize_answers(base_rows), indent=2))
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
                "stock phrase", "non-answer", "echo", "parse err"):
        t.add_column(col)
    for e in summary["subsets"]:
        cells = [str(Rate(**e[k])) if k in e else "" for k in ("asr", "refusal_rate", "compliance_rate", "over_refusal_rate")]
        shares = ["-" if e.get(k) is None else f"{e[k]:.2f}" for k in ("stock_phrase_share", "non_answer_share", "echo_share")]
        t.add_row(e["benchmark"], e["subset"], str(e["n"]), *cells, *shares, str(e["parse_errors"]))
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
        attacks = read_jsonl(run / "attacks.jsonl")
    else:
        attacks = attacks_from_run(run, last_steps)
    print_kv("Attack diversity", diversity_report(attacks))


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
    from selfredteam.game.play import sampling_params
    from selfredteam.policy.spec import policy_from_spec

    cfg = config_from(preset, config, list(set_ or []) + ([f"data.seeds={seeds}"] if seeds else []))
    pool = load_pool(cfg.data)
    batch = sample_batch(pool, n, cfg.game.harmful_fraction, random.Random(cfg.run.seed))
    out.mkdir(parents=True, exist_ok=True)
    announce_runtime(eval_model_config(model, cfg), cfg.run.threads, out)
    with console.status(f"Loading attacker {model}..."):
        policy = policy_from_spec(model, cfg)
    with console.status(f"Generating {len(batch)} attacks..."):
        attacks = generate_attacks(policy, batch, cfg.game.cot, sampling_params(cfg.generation, "attacker", cfg.game.cot))
    warn_truncations(policy)
    save_config(cfg, out)
    write_jsonl(out / "attacks.jsonl", attacks)
    if len(attacks) >= 2:
        print_kv("Attack diversity", diversity_report(attacks))
    console.print(f"Wrote {out / 'attacks.jsonl'}.")


@app.command()
@friendly_errors
def probe(
    model: Annotated[str, typer.Option(help="embedded | HF id/dir | a `train` run or checkpoint dir (needs local weights).")] = "embedded",
    splits: Annotated[str, typer.Option(help="Comma-separated: wjb-adversarial, wjb-vanilla, or-toxic-hard, xstest.")] = "wjb-adversarial,or-toxic-hard",
    layers: Annotated[str | None, typer.Option(help="Comma-separated layer indices (0 = embeddings); default: a quarter, half, three quarters and all of the depth.")] = None,
    fit: Annotated[list[str] | None, typer.Option(help="A labelled set to fit a transferred probe on (repeatable): seed sources joined by `+` (`embedded`, `embedded:adversarial`, `embedded:borderline`, a file), or `none`. Default: the training pool (data.seeds + data.extra_seeds) of the --model run, else of the config.")] = None,
    fit_per_class: Annotated[int | None, typer.Option(help="At most this many harmful and this many benign prompts of each fit set (seeded sample).")] = None,
    per_class: Annotated[int | None, typer.Option(help="At most this many harmful and this many benign prompts per split (seeded sample).")] = None,
    folds: int = 5,
    behaviour: Annotated[bool, typer.Option(help="Also answer the prompts and measure the behavioural J (generation: the slow part).")] = True,
    reuse_answers: Annotated[list[Path] | None, typer.Option(help="An `eval` results.jsonl of the same model whose answers are reused for the behavioural J (repeatable; read only).")] = None,
    out: Annotated[Path, typer.Option(help="Where probe.json, probe.md and the answers go.")] = Path("runs/probe"),
    cache_dir: Annotated[Path | None, typer.Option(help="Feature cache (default: the user cache dir).")] = None,
    preset: PresetOpt = "cpu-demo",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Knows vs acts: per layer, how well a linear probe on the model's hidden states tells harmful
    from benign prompts (in distribution, and transferred from the training pool), beside the
    model's behavioural J (refusal on harmful minus on benign) on the same prompts."""
    from selfredteam.data import load_pool
    from selfredteam.eval.probe import (
        default_cache_root,
        probe_markdown,
        run_probe,
        sample_per_class,
        write_result,
    )
    from selfredteam.eval.run import answer_prompts
    from selfredteam.game.play import sampling_params
    from selfredteam.policy.spec import policy_from_spec, run_training_pool

    cfg = config_from(preset, config, set_)
    split_names = [x.strip() for x in splits.split(",") if x.strip()]
    fits = {}
    for name in fit or [run_training_pool(model) or "+".join([cfg.data.seeds, *cfg.data.extra_seeds])]:
        if name == "none":
            continue
        seeds = [s for spec in name.split("+") for s in load_pool(cfg.data, spec.strip())]
        fits[name] = sample_per_class(seeds, fit_per_class, f"{cfg.run.seed}:{name}", lambda s: s.harmful)
    announce_runtime(eval_model_config(model, cfg), cfg.run.threads, out)
    with console.status(f"Loading {model}..."):
        policy = policy_from_spec(model, cfg)
    depth = getattr(getattr(getattr(policy, "model", None), "config", None), "num_hidden_layers", 24)
    layer_ids = [int(x) for x in layers.split(",")] if layers else sorted({depth // 4, depth // 2, 3 * depth // 4, depth})
    answer = None
    if behaviour:
        from selfredteam.judges import build_judge

        with console.status("Loading judge..."):
            judge = build_judge(cfg.judge)
        params = sampling_params(cfg.generation, "defender", cfg.game.cot)

        def answer(name: str, prompts: list[Any]) -> list[dict[str, Any]]:
            status.update(f"{name}: answering and judging {len(prompts)} prompts (behavioural J)...")
            return answer_prompts(policy, judge, {name: prompts}, cfg.game.cot, params, out / "answers" / name,
                                  reuse=reuse_answers or [])

    status = console.status("Reading hidden states...")
    status.start()
    try:
        result = run_probe(policy, split_names, layer_ids, fits=fits, per_class=per_class,
                           folds=folds, seed=cfg.run.seed, cache_root=cache_dir or default_cache_root(), answer=answer,
                           progress=lambda what, k, n: status.update(f"Hidden states: {what} {k}/{n}"))
    finally:
        status.stop()
    json_path, md_path = write_result(result, out)
    out_console.print("\n".join(probe_markdown(result)))
    console.print(f"Wrote {json_path} and {md_path}.")


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
    from selfredteam.eval.judge import evaluate_judge
    from selfredteam.judges import build_judge
    from selfredteam.judges.fit import find_data_dir

    cfg = config_from(preset, config, set_)
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
