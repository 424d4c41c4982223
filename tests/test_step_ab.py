"""benchmarks/step_ab.py: two runs time-sliced on the CPU, each step's stopped time taken out."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from step_ab import Side, overlap, run_sliced  # noqa: E402

# A stand-in for `train`, named as such: each "step" burns CPU time (which a stopped process does not
# accumulate) for play and then learn, and writes a metrics row with their wall-clock seconds, as train does.
FAKE_TRAIN = textwrap.dedent("""
    import json, sys, time
    def burn(cpu_s):
        t0, w0 = time.process_time(), time.perf_counter()
        while time.process_time() - t0 < cpu_s:
            pass
        return time.perf_counter() - w0
    with open(sys.argv[1], "w") as f:
        for step in range(1, 4):
            play, learn = burn(0.3), burn(0.2)
            f.write(json.dumps({"step": step, "timing/generate_s": play, "timing/judge_s": 0.0,
                                "timing/learn_s": learn, "timing/step_s": play + learn}) + "\\n")
            f.flush()
""")


def test_overlap_counts_only_the_part_inside() -> None:
    assert overlap([(0.0, 1.0), (2.0, 4.0), (5.0, 6.0)], 0.5, 3.0) == 1.5


def test_sliced_runs_report_their_own_cpu_time_not_the_other_ones(tmp_path: Path) -> None:
    sides = []
    for name in "AB":
        metrics = tmp_path / f"{name}.jsonl"
        proc = subprocess.Popen([sys.executable, "-c", FAKE_TRAIN, str(metrics)], start_new_session=True)
        sides.append(Side(name, proc, metrics))
    run_sliced(sides, slice_s=0.1, poll_s=0.01)
    for side in sides:
        assert side.proc.returncode == 0
        steps = side.active()
        assert [s["n"] for s in steps] == [1, 2, 3]
        # The other run held the CPU inside these steps, and the step's own clock ran on meanwhile:
        assert sum(s["stopped"] for s in steps) > 0.3
        assert max(row["timing/step_s"] for row in side.rows) > 0.6
        for s in steps:
            assert abs(s["step"] - 0.5) < 0.2, s
            assert abs(s["play"] - 0.3) < 0.15 and abs(s["learn"] - 0.2) < 0.15, s
