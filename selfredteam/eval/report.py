"""`selfredteam report RUN [RUN ...]`: one self-contained HTML file (plots embedded) + Markdown.

For each run: training curves from metrics.jsonl, the collapse monitor's summary (eval/monitor.py:
last-5-step means and the steps each threshold tripped), the before/after safety table when the
run dir holds `eval/<name>/summary.json` files (from `selfredteam eval --out RUN/eval/<name>`),
refusal discrimination J and its change against a baseline when it holds `comparison.json`
(`eval --baseline`), and sample games with the model text collapsed behind a click and a content
warning. Several runs add a comparison table (e.g. self-play vs attacker-only vs defender-only
vs no-CoT).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from selfredteam.errors import UserError
from selfredteam.eval.compare import fmt_interval
from selfredteam.eval.metrics import Rate
from selfredteam.eval.probe import behaviour_text, probe_markdown, probe_table
from selfredteam.fsutil import read_jsonl

CURVES = [
    ("reward/defender_mean", "defender mean reward"),
    ("reward/attacker_mean", "attacker mean reward"),
    ("game/defender_correct_refusal", "defender correct-refusal rate"),
    ("game/benign_refusal_rate", "benign refusal rate (over-refusal)"),
    ("cot/violation_rate", "CoT-violation rate"),
    ("kl/mean", "KL to reference"),
]
COMPARE = {"reward/defender_mean": "defender reward", "reward/attacker_mean": "attacker reward",
           "game/defender_correct_refusal": "correct refusal", "game/asr": "in-training ASR",
           "game/benign_refusal_rate": "benign refusal", "cot/violation_rate": "CoT violations"}


def _metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run} has no metrics.jsonl: pass a `selfredteam train` run dir.")
    return read_jsonl(path)


def _last_mean(rows: list[dict[str, Any]], key: str, k: int = 5) -> float | None:
    vals = [r[key] for r in rows[-k:] if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode()


def plot_curves(runs: dict[str, list[dict[str, Any]]]) -> str:
    """One PNG (base64) with a panel per key metric, a line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (key, label) in zip(axes.flat, CURVES):
        for name, rows in runs.items():
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=name)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def _eval_tables(run: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    out = []
    for summ in sorted((run / "eval").glob("*/summary.json")) if (run / "eval").is_dir() else []:
        out.append((summ.parent.name, json.loads(summ.read_text())["subsets"]))
    return out


def _comparisons(run: Path) -> list[tuple[str, dict[str, Any]]]:
    paths = sorted((run / "eval").glob("*/comparison.json")) if (run / "eval").is_dir() else []
    return [(p.parent.name, json.loads(p.read_text())) for p in paths]


def _probes(run: Path) -> list[tuple[str, dict[str, Any]]]:
    """`selfredteam probe` results saved with the run (RUN/probe/probe.json, RUN/eval/NAME/probe.json)."""
    paths = sorted([*run.glob("probe/probe.json"), *run.glob("eval/*/probe.json")])
    return [(p.parent.name, json.loads(p.read_text())) for p in paths]


def _probe_html(title: str, result: dict[str, Any]) -> list[str]:
    h = [f"<h2>{html.escape(title)}</h2><p>Does a linear probe on the hidden states tell harmful from benign "
         "prompts (AUC, and J = TPR - FPR at its threshold), in distribution (k-fold) and transferred from each "
         "fit set, and does the model act on it (behavioural J)?</p>"]
    for name, split in result["splits"].items():
        cols, rows = probe_table(result, split)
        h.append(f"<h3>{html.escape(name)}: behavioural J {html.escape(behaviour_text(split))}</h3><table><tr>"
                 + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>")
        h += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in rows]
        h.append("</table>")
    return h


def monitor_summary(rows: list[dict[str, Any]]) -> list[tuple[str, float | None, str, list[int]]]:
    """(signal, last-5-step mean, threshold, steps it tripped at) for each monitor threshold, by
    replaying the run's monitor/* metrics through the same window and thresholds as training."""
    from selfredteam.eval.monitor import THRESHOLDS, CollapseMonitor

    monitor = CollapseMonitor()
    tripped: dict[str, list[int]] = {t.key: [] for t in THRESHOLDS}
    for r in rows:
        if "monitor/top_answer_share" not in r:
            continue
        monitor.tripped.clear()
        monitor.update(r["step"], r)
        for key in monitor.tripped:
            tripped[key].append(r["step"])
    return [(t.key, _last_mean(rows, t.key), f">= {t.above}", tripped[t.key]) for t in THRESHOLDS]


def _steps(steps: list[int]) -> str:
    return "none" if not steps else ", ".join(map(str, steps[:12])) + (" ..." if len(steps) > 12 else "")


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def _sample_games(run: Path, n: int = 6) -> list[dict[str, Any]]:
    files = sorted((run / "games").glob("step_*.jsonl"), key=lambda p: int(p.stem.split("_")[1]))
    return read_jsonl(files[-1], limit=n) if files else []


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
          "th:first-child,td:first-child{text-align:left}.warn{background:#fff3cd;padding:8px;border-radius:4px}"
          "pre{white-space:pre-wrap;background:#f6f6f6;padding:6px}")


def page(title: str, body: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_STYLE}"
            "</style></head><body>" + "\n".join(body) + "</body></html>")


def redteam_report(summary: dict[str, Any], results: list[dict[str, Any]], out: Path, top: int = 10) -> tuple[Path, Path]:
    """OUT/report.html and report.md for `selfredteam redteam`: success rates with intervals per
    seed class and category, diversity, and the attacks that worked, collapsed behind a warning."""
    title = f"Red-teaming {summary['target']} with {summary['attacker']}"
    cols = ["seeds", "attempts judged", "per-attempt success", f"best of {summary['attempts_per_seed']}", "target refusal"]

    def rows(groups: dict[str, Any]) -> list[tuple[str, list[str]]]:
        return [(name, [str(r["best_of_k"]["n"]), str(r["judged"]), str(Rate(**r["per_attempt"])),
                        str(Rate(**r["best_of_k"])), str(Rate(**r["refusal"]))]) for name, r in groups.items()]

    h = [f"<h1>{html.escape(title)}</h1><p>{summary['seeds']} seeds x {summary['attempts_per_seed']} attempts; success "
         "= a judged harmful answer to a harmful seed's attack (a refusal of a benign seed's); 95% Wilson intervals; "
         f"judge parse errors: {summary['judge_parse_errors']} (left out).</p>"]
    md = [f"# {title}", ""]
    for heading, groups in (("By seed class", summary["by_label"]), ("Harmful seeds by category", summary["by_category"])):
        h.append(f"<h2>{heading}</h2><table><tr><th>group</th>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>")
        md += [f"## {heading}", "", "| group | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for name, cells in rows(groups):
            h.append(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            md.append(f"| {name} | " + " | ".join(cells) + " |")
        h.append("</table>")
        md.append("")
    if "diversity" in summary:
        d = summary["diversity"]
        h.append(f"<p>Attack diversity: SBERT {d['sbert_diversity']:.3f}, Self-BLEU {d['self_bleu_diversity']:.3f} "
                 f"(1 - similarity, {d['n']} attacks).</p>")
        md.append(f"Attack diversity: SBERT {d['sbert_diversity']:.3f}, Self-BLEU {d['self_bleu_diversity']:.3f}.\n")
    worked = [r for r in results if r["success"]][:top]
    h.append(f"<h2>Attacks that worked ({len(worked)} shown)</h2><p class='warn'>Content warning: the attacks and the "
             "target's answers below may contain harmful text; each is collapsed until you click it.</p>")
    for r in worked:
        h.append(f"<details><summary>seed {r['seed_index']} ({html.escape(r['seed_label'])}, "
                 f"{html.escape(r['category'])}), attempt {r['attempt']}</summary><b>attack</b>"
                 f"<pre>{html.escape(r['attack'])}</pre><b>target answer</b><pre>{html.escape(r['response'])}</pre></details>")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.html").write_text(page("selfredteam red-teaming", h), encoding="utf-8")
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return out / "report.html", out / "report.md"


def build_report(runs: list[Path], out: Path, labels: list[str] | None = None) -> tuple[Path, Path]:
    """Write OUT/report.html (self-contained) and OUT/report.md; return their paths. `labels`
    name the runs (default: their dir names)."""
    labels = labels or [r.name for r in runs]
    if len(set(labels)) != len(labels):
        labels = [f"{r.parent.name}/{r.name}" for r in runs]
    data = dict(zip(labels, (_metrics(r) for r in runs)))
    curves = plot_curves(data)
    h: list[str] = [
        "<h1>selfredteam report</h1>",
        "<h2>Training curves</h2>",
        f"<img id='curves' alt='training curves' src='data:image/png;base64,{curves}' style='width:100%'>",
    ]
    md = ["# selfredteam report", "", "## Last-5-step means", ""]
    h.append("<h2>Runs (mean of the last 5 steps)</h2><table><tr><th>run</th><th>steps</th>"
             + "".join(f"<th title='{k}'>{html.escape(v)}</th>" for k, v in COMPARE.items()) + "</tr>")
    md.append("| run | steps | " + " | ".join(COMPARE.values()) + " |")
    md.append("|---|---|" + "---|" * len(COMPARE))
    for name, rows in data.items():
        vals = [_last_mean(rows, k) for k in COMPARE]
        h.append(f"<tr><td>{html.escape(name)}</td><td>{len(rows)}</td>" + "".join(f"<td>{_fmt(v)}</td>" for v in vals) + "</tr>")
        md.append(f"| {name} | {len(rows)} | " + " | ".join(_fmt(v) for v in vals) + " |")
    h.append("</table>")
    for name, run in zip(labels, runs):
        rows = data[name]
        if any("monitor/top_answer_share" in r for r in rows):
            h.append(f"<h2>Collapse monitor: {html.escape(name)}</h2><table><tr><th>signal</th>"
                     "<th>last-5 mean</th><th>warns at</th><th>tripped at steps (3-step mean)</th></tr>")
            md += ["", f"## Collapse monitor: {name}", "", "| signal | last-5 mean | warns at | tripped at steps |",
                   "|---|---|---|---|"]
            for key, mean, thr, steps in monitor_summary(rows):
                h.append(f"<tr><td>{html.escape(key)}</td><td>{_fmt(mean)}</td><td>{thr}</td><td>{_steps(steps)}</td></tr>")
                md.append(f"| {key} | {_fmt(mean)} | {thr} | {_steps(steps)} |")
            h.append("</table>")
        for label, comp in _comparisons(run):
            title = f"Refusal discrimination: {name} / {label} (vs {comp.get('baseline', 'baseline')})"
            cols = ["family", "n harm/benign", "J baseline", "J model", "ΔJ [95%]", "Δ harmful refusal", "Δ over-refusal"]
            h.append(f"<h2>{html.escape(title)}</h2><p>J = refusal rate on harmful prompts − on benign prompts "
                     "(benchmark labels, judge refusal label); intervals: Newcombe for J, paired bootstrap for changes.</p>"
                     "<table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>")
            md += ["", f"## {title}", "", "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
            for f in comp["families"]:
                cells = [f["family"], f"{f['n_harmful']}/{f['n_benign']}", fmt_interval(f["baseline"]["J"]),
                         fmt_interval(f["model"]["J"]), fmt_interval(f["delta_J"]),
                         fmt_interval(f["delta_harmful_refusal"]), fmt_interval(f["delta_over_refusal"])]
                h.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
                md.append("| " + " | ".join(cells) + " |")
            h.append("</table>")
        for label, result in _probes(run):
            title = f"Knows vs acts: {name} / {label}"
            h += _probe_html(title, result)
            md += ["", f"## {title}", "", *probe_markdown(result)]
        for label, subsets in _eval_tables(run):
            h.append(f"<h2>Safety eval: {html.escape(name)} / {html.escape(label)}</h2><table><tr><th>benchmark</th>"
                     "<th>subset</th><th>n</th><th>ASR</th><th>refusal</th><th>compliance</th><th>over-refusal</th></tr>")
            md += ["", f"## Safety eval: {name} / {label}", "", "| benchmark | subset | n | ASR | refusal | compliance | over-refusal |",
                   "|---|---|---|---|---|---|---|"]
            for e in subsets:
                cells = [str(Rate(**e[k])) if k in e else "" for k in ("asr", "refusal_rate", "compliance_rate", "over_refusal_rate")]
                h.append(f"<tr><td>{html.escape(e['benchmark'])}</td><td>{html.escape(e['subset'])}</td><td>{e['n']}</td>"
                         + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
                md.append(f"| {e['benchmark']} | {e['subset']} | {e['n']} | " + " | ".join(cells) + " |")
            h.append("</table>")
    h.append("<h2>Sample games (last step)</h2><p class='warn'>Content warning: model outputs below may "
             "contain harmful text; each is collapsed until you click it.</p>")
    for name, run in zip(labels, runs):
        for g in _sample_games(run):
            att = g.get("attacker") or {}
            summary = (f"{html.escape(name)}: {g['seed_label']} seed, revised={g['revised']}, "
                       f"rewards={html.escape(json.dumps(g['rewards']))}, outcomes={html.escape(', '.join(g['outcomes']))}")
            body = ""
            if att:
                body += f"<b>attacker prompt</b><pre>{html.escape(att.get('answer', ''))}</pre>"
            body += f"<b>defender answer</b><pre>{html.escape(g['defender']['answer'])}</pre>"
            h.append(f"<details><summary>{summary}</summary>{body}</details>")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.html").write_text(page("selfredteam report", h), encoding="utf-8")
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return out / "report.html", out / "report.md"
