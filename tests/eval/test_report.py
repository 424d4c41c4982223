"""Report: self-contained HTML with embedded plots; rendered by headless Chromium when installed."""

import base64
import json
import os
import re
import shutil
import subprocess

import pytest

from selfredteam.eval.report import build_report


def fake_run(root, name, n_steps=6):
    """A run dir shaped like `selfredteam train` output (small synthetic numbers)."""
    run = root / name
    (run / "games").mkdir(parents=True)
    rows = [{"step": s, "reward/defender_mean": 0.1 * s, "reward/attacker_mean": -0.1 * s,
             "game/defender_correct_refusal": 0.05 * s, "game/benign_refusal_rate": 0.2,
             "cot/violation_rate": 1 - 0.1 * s, "kl/mean": 0.01 * s, "game/asr": 0.1,
             "monitor/top_answer_share": 0.9 if s >= 3 else 0.1, "monitor/echo_thought": 0.0}
            for s in range(1, n_steps + 1)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    game = {"seed": "s", "seed_label": "harmful", "revised": True, "attacker": {"answer": "<b>attack</b>"},
            "defender": {"answer": "answer"}, "rewards": {"attacker": 1.0, "defender": -1.0}, "outcomes": ["x"]}
    (run / "games" / f"step_{n_steps}.jsonl").write_text(json.dumps(game) + "\n")
    (run / "eval" / "after").mkdir(parents=True)
    (run / "eval" / "after" / "summary.json").write_text(json.dumps({"subsets": [
        {"benchmark": "xstest", "subset": "xstest_unsafe", "label": "harmful", "n": 10, "parse_errors": 0,
         "asr": {"k": 1, "n": 10, "low": 0.02, "high": 0.4}, "refusal_rate": {"k": 9, "n": 10, "low": 0.6, "high": 0.98}}]}))
    j = {"value": 0.1, "low": 0.0, "high": 0.2}
    (run / "eval" / "after" / "comparison.json").write_text(json.dumps({"baseline": "embedded", "families": [
        {"family": "xstest", "n_harmful": 10, "n_benign": 12, "baseline": {"J": j}, "model": {"J": j | {"value": 0.4}},
         "delta_J": {"value": 0.3, "low": 0.1, "high": 0.5}, "delta_harmful_refusal": j, "delta_over_refusal": j}]}))
    score = {"auc": 0.91, "j": 0.62, "tpr": 0.8, "fpr": 0.18}
    (run / "probe").mkdir()
    (run / "probe" / "probe.json").write_text(json.dumps({
        "model": "m", "fits": {"embedded": {"harmful": 9, "benign": 9}}, "folds": 5, "splits": {
            "wjb-adversarial": {"n_harmful": 20, "n_benign": 20, "behaviour": {"j": 0.05}, "layers": [
                {"layer": 12, "in_distribution": score, "transferred": {"embedded": score | {"j": 0.0}}}]}}}))
    return run


def test_report_is_self_contained(tmp_path):
    runs = [fake_run(tmp_path, "selfplay"), fake_run(tmp_path, "no-cot", 4)]
    html_path, md_path = build_report(runs, tmp_path / "out")
    text = html_path.read_text()
    imgs = re.findall(r"src='data:image/png;base64,([^']+)'", text)
    assert imgs and base64.b64decode(imgs[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http" not in text.replace("http-equiv", "")  # nothing fetched from outside
    assert "<details>" in text and "Content warning" in text and "&lt;b&gt;attack&lt;/b&gt;" in text
    md = md_path.read_text()
    assert "| selfplay | 6 |" in md and "| no-cot | 4 |" in md and "10.0% [2.0, 40.0]" in md
    assert "| xstest | 10/12 | +0.10 [+0.00, +0.20] | +0.40 [+0.00, +0.20] | +0.30 [+0.10, +0.50] |" in md
    # the monitor's window of 3: a top-answer share of 0.9 from step 3 trips from step 4 (mean of steps 2-4 is 0.63)
    assert "| monitor/top_answer_share | 0.740 | >= 0.5 | 4, 5, 6 |" in md
    assert "Knows vs acts: selfplay / probe" in text and "behavioural J +0.05" in text
    assert "| 12 | 0.91 | +0.62 | 0.91 / +0.00 (0.80, 0.18) |" in md


# Skipped on a dev machine without Chromium; in CI (.ci/run installs it) a missing browser fails.
@pytest.mark.skipif(shutil.which("chromium") is None and not os.environ.get("CI"),
                    reason="Chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    html_path, _ = build_report([fake_run(tmp_path, "selfplay")], tmp_path / "out")
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'ud'}",
                    "--window-size=1200,1000", f"--screenshot={shot}", html_path.as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = Image.open(shot).convert("RGB")
    # The curves image sits below the title: count pixels of matplotlib's default line colour
    # (C0, #1f77b4); a broken image would leave that area white.
    blue = sum(1 for r, g, b in img.getdata() if abs(r - 0x1F) < 40 and abs(g - 0x77) < 40 and abs(b - 0xB4) < 40)
    assert blue > 300, f"plot pixels not found in screenshot ({blue})"
