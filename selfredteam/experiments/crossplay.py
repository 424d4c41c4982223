"""`selfredteam crossplay RUN_A RUN_B ...`: every attacker against every defender.

Rows are attackers, columns defenders, the base model on both sides. Each attacker revises one
fixed seed set once (half harmful, half benign); each defender answers every attacker's prompts;
the judge labels every answer. Cells: attack success (judged harmful answers to revisions of
harmful seeds), refusal of harmful revisions, refusal of benign revisions (over-refusal), each
with a 95% Wilson interval. One model is in memory at a time; attacks and answers are cached in
OUT, so a re-run with one more run only plays the new row and column.
"""

from __future__ import annotations

import base64
import html
import json
import random
from pathlib import Path
from typing import Any

from selfredteam.config import Config
from selfredteam.eval.benchmarks import EvalPrompt
from selfredteam.eval.metrics import Rate
from selfredteam.eval.report import page
from selfredteam.fsutil import read_jsonl, write_jsonl

METRICS = [("asr", "attack success (harmful seeds)"), ("harmful_refusal", "refusal of harmful revisions"),
           ("benign_refusal", "refusal of benign revisions (over-refusal)")]


def players(runs: list[Path], cfg: Config) -> list[tuple[str, str]]:
    """(label, spec) of the base model and each run, labels unique."""
    out = [("base", cfg.model.name_or_path)]
    for run in runs:
        label = run.name if run.name not in {x for x, _ in out} else f"{run.parent.name}/{run.name}"
        out.append((label, str(run)))
    return out


def crossplay(runs: list[Path], cfg: Config, out: Path, tools: Any, n_seeds: int = 48) -> dict[str, Any]:
    from selfredteam.data import load_pool, sample_batch
    from selfredteam.eval.diversity import generate_attacks
    from selfredteam.eval.run import answer_prompts
    from selfredteam.game.play import sampling_params

    g, cot = cfg.generation, cfg.game.cot
    seeds = sample_batch(load_pool(cfg.data), n_seeds, 0.5, random.Random(cfg.run.seed))
    side = players(runs, cfg)
    attacks: dict[str, list[EvalPrompt]] = {}
    for label, spec in side:  # 1. each attacker revises every seed once
        path = out / "attacks" / f"{_file(label)}.jsonl"
        if not path.is_file():
            rows = generate_attacks(tools.policy(spec, cfg, "attacker"), seeds, cot, sampling_params(g, "attacker", cot))
            write_jsonl(path, rows)
        rows = read_jsonl(path)
        attacks[label] = [EvalPrompt(r["attack"], r["seed_label"], label, f"seed:{i}") for i, r in enumerate(rows)]
    answers: dict[str, list[dict[str, Any]]] = {}
    for label, spec in side:  # 2. each defender answers every attacker's prompts (cached per defender)
        answers[label] = answer_prompts(tools.policy(spec, cfg, "defender"), tools.judge, attacks, cot,
                                        sampling_params(g, "defender", cot), out / "answers" / _file(label))
    result = {"attackers": [x for x, _ in side], "defenders": [x for x, _ in side], "n_seeds": len(seeds),
              "cells": matrix(answers)}
    (out / "crossplay.json").write_text(json.dumps(result, indent=2))
    return result


def matrix(answers: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """cells[attacker][defender][metric] = Wilson rate, from each defender's judged answers (rows
    of answer_prompts: `benchmark` is the attacker, `label` the seed's class)."""
    from selfredteam.eval.metrics import wilson

    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for defender, rows in answers.items():
        for attacker in dict.fromkeys(r["benchmark"] for r in rows):
            ok = [r for r in rows if r["benchmark"] == attacker and not r["judge"]["parse_error"]]
            harmful = [r for r in ok if r["label"] == "harmful"]
            benign = [r for r in ok if r["label"] == "benign"]
            cells.setdefault(attacker, {})[defender] = {
                "asr": vars(wilson(sum(bool(r["judge"]["response_harmful"]) for r in harmful), len(harmful))),
                "harmful_refusal": vars(wilson(sum(bool(r["judge"]["response_refusal"]) for r in harmful), len(harmful))),
                "benign_refusal": vars(wilson(sum(bool(r["judge"]["response_refusal"]) for r in benign), len(benign))),
            }
    return cells


def heatmap_png(result: dict[str, Any]) -> bytes:
    """Three heat maps (one per metric), attackers as rows, defenders as columns, values printed."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    att, dfd = result["attackers"], result["defenders"]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 0.6 * len(att) + 2))
    for ax, (key, title) in zip(axes, METRICS):
        vals = np.array([[_value(result["cells"][a][d][key]) for d in dfd] for a in att])
        ax.imshow(vals, vmin=0, vmax=1, cmap="Reds")
        ax.set_xticks(range(len(dfd)), dfd, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(att)), att, fontsize=8)
        ax.set_xlabel("defender")
        ax.set_title(title, fontsize=9)
        for i in range(len(att)):
            for j in range(len(dfd)):
                ax.text(j, i, "-" if np.isnan(vals[i, j]) else f"{vals[i, j]:.2f}", ha="center", va="center", fontsize=8)
    axes[0].set_ylabel("attacker")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _value(rate: dict[str, Any]) -> float:
    return rate["k"] / rate["n"] if rate["n"] else float("nan")


def _file(label: str) -> str:
    return label.replace("/", "__")


def crossplay_report(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """OUT/report.html (heat maps embedded) and OUT/report.md for a `selfredteam crossplay` matrix."""
    png = base64.b64encode(heatmap_png(result)).decode()
    h = [f"<h1>Cross-play: attackers (rows) x defenders (columns)</h1><p>{result['n_seeds']} seeds, half harmful; "
         "95% Wilson intervals.</p>", f"<img id='heatmap' alt='cross-play heat maps' src='data:image/png;base64,{png}' "
         "style='width:100%'>"]
    md = ["# Cross-play: attackers (rows) x defenders (columns)", ""]
    for key, title in METRICS:
        cols = result["defenders"]
        h.append(f"<h2>{html.escape(title)}</h2><table><tr><th>attacker \\ defender</th>"
                 + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>")
        md += [f"## {title}", "", "| attacker \\ defender | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for a in result["attackers"]:
            cells = [str(Rate(**result["cells"][a][d][key])) for d in cols]
            h.append(f"<tr><td>{html.escape(a)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            md.append(f"| {a} | " + " | ".join(cells) + " |")
        h.append("</table>")
        md.append("")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.html").write_text(page("selfredteam cross-play", h), encoding="utf-8")
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return out / "report.html", out / "report.md"
