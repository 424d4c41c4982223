"""benchmarks/_common.py: the benchmark scripts' subprocesses run the package the script imported,
and their kernel probes time a call the same way."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import flop_rate, selfredteam_cli  # noqa: E402


def test_cli_runs_the_imported_package_not_the_working_directorys(tmp_path: Path) -> None:
    """Started from a directory holding another `selfredteam` (another checkout, when an old
    commit's worktree is timed through PYTHONPATH), the subprocess still runs the imported one:
    `python -m selfredteam` would have picked the working directory's."""
    decoy = tmp_path / "selfredteam"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise SystemExit('the working directory package was imported')\n")
    (decoy / "__main__.py").write_text("")
    bare = subprocess.run([sys.executable, "-m", "selfredteam", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert "working directory package" in bare.stderr  # the trap the helper avoids
    res = subprocess.run(selfredteam_cli("--help"), cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "selfredteam" in res.stdout and "train" in res.stdout


def test_flop_rate_times_calls_after_the_warmup() -> None:
    """The rate is the FLOPs of the timed calls over their time: warm-up calls are not counted, a
    call slower than the budget is still timed once, and a fast one is repeated for the budget."""
    import time

    calls = []

    def slow() -> None:
        calls.append(1)
        time.sleep(0.05)

    rate = flop_rate(slow, 1e6, budget=0.0, warmup=2)
    assert len(calls) == 3  # two untimed, one timed
    assert 1e6 / 0.2 < rate <= 1e6 / 0.05
    calls.clear()
    flop_rate(lambda: calls.append(1), 1.0, budget=0.05, warmup=0)
    assert len(calls) > 10
