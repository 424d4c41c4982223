"""Two codes' cpu-demo steps on one drifting VM, time-sliced so the drift hits both alike.

Why: the shared 2-core VMs change speed within an hour (a Zen 1 VM went from 62 to 37 GFLOP/s
in 90 minutes), so `learner_step.py` run once per code, one after the other, measures the drift
as much as the code: two such rounds in opposite order gave 1.37x and 0.97x. Here both
`train --preset cpu-demo` runs start together and take turns on the cores: one runs for
`--slice` seconds while the other is stopped (SIGSTOP), then they swap, so every minute of the
VM's drift falls on both. A stopped process's clocks still run, so each step's wall time from
metrics.jsonl is corrected by the stopped intervals inside it: the step ends when its row
appears (polled while the process runs, and once more right after it is stopped), and it began
`timing/step_s` before that. Play (generate and judge) opens the step and learn follows it, so
both are corrected the same way.

Each run gets its own copy of the user's judge cache (both warm, neither waiting on the
other's SQLite lock while it is stopped) and its own run dir.

    python benchmarks/step_ab.py --a . --b ../old30 --steps 5

POSIX only (SIGSTOP/SIGCONT).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import cpu_name, step_tokens, timed_train_cli

from selfredteam.fsutil import cache_dir

Interval = tuple[float, float]


def overlap(pauses: list[Interval], start: float, end: float) -> float:
    """Seconds of `pauses` that fall inside [start, end]."""
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in pauses)


@dataclass
class Side:
    """One run under the scheduler: its process, the rows seen so far and when it was stopped."""

    name: str
    proc: subprocess.Popen
    metrics: Path
    rows: list[dict] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    pauses: list[Interval] = field(default_factory=list)
    stopped_at: float | None = None
    _offset: int = 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGSTOP)
        self.stopped_at = time.time()
        self.poll(self.stopped_at)  # a row written just before the stop ended its step by then

    def resume(self) -> None:
        if self.stopped_at is not None:
            os.killpg(self.proc.pid, signal.SIGCONT)
            self.pauses.append((self.stopped_at, time.time()))
            self.stopped_at = None

    def poll(self, now: float | None = None) -> None:
        """Read complete new rows of metrics.jsonl; each ended its step no later than now."""
        if not self.metrics.exists():
            return
        with open(self.metrics, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        done = chunk.rfind(b"\n") + 1
        self._offset += done
        for line in chunk[:done].decode().splitlines():
            if line.strip():
                self.rows.append(json.loads(line))
                self.ends.append(now if now is not None else time.time())

    def active(self) -> list[dict[str, float]]:
        """Per step: step, play and learn seconds with the stopped intervals inside them taken out."""
        out = []
        for row, end in zip(self.rows, self.ends):
            start = end - row["timing/step_s"]
            play = row["timing/generate_s"] + row["timing/judge_s"]
            cut = {"step": (start, end), "play": (start, start + play),
                   "learn": (start + play, start + play + row["timing/learn_s"])}
            # Each code samples its own games after step 1 (and before it too, where the sampling differs):
            # the tokens say how much each step generated.
            tokens = step_tokens(row)
            out.append({k: (b - a) - overlap(self.pauses, a, b) for k, (a, b) in cut.items()}
                       | {"stopped": overlap(self.pauses, start, end), "n": row["step"], "tokens": tokens})
        return out


def run_sliced(sides: list[Side], slice_s: float, poll_s: float = 0.05) -> None:
    """Let the sides take turns on the CPU until all have exited; the last one runs alone."""
    for s in sides[1:]:
        s.stop()
    turn = 0
    while any(s.alive() for s in sides):
        live = [s for s in sides if s.alive()]
        side = live[turn % len(live)]
        side.resume()
        until = time.time() + slice_s
        while side.alive() and (len(live) == 1 or time.time() < until):
            side.poll()
            time.sleep(poll_s)
        if side.alive():
            side.stop()
        else:
            side.poll()
        turn += 1
    for s in sides:
        s.poll()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", default=".", help="checkout A (the package root: the folder holding selfredteam/)")
    ap.add_argument("--b", required=True, help="checkout B, e.g. a worktree of an old commit")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--slice", type=float, default=5.0, help="seconds each run holds the CPU per turn")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides for both runs")
    ap.add_argument("--keep", type=Path, help="keep the run dirs and logs here")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="step_ab-")) if args.keep is None else args.keep
    warm = cache_dir() / "judge_cache.sqlite"
    sides = []
    t0 = time.time()
    for name, root in (("A", args.a), ("B", args.b)):
        d = tmp / name
        d.mkdir(parents=True, exist_ok=True)
        if warm.exists():
            shutil.copy(warm, d / "judge_cache.sqlite")
        # The limit reads the wall clock, which runs on while the other run holds the CPU.
        sets = [f"judge.cache_path={d / 'judge_cache.sqlite'}", "train.time_limit_min=0", *args.set]
        with open(d / "train.log", "w") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(timed_train_cli(d / "run", args.steps, sets, root=root), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        sides.append(Side(name, proc, d / "run" / "metrics.jsonl"))
    try:
        run_sliced(sides, args.slice)
    finally:
        for s in sides:
            if s.alive():
                os.killpg(s.proc.pid, signal.SIGCONT)
                os.killpg(s.proc.pid, signal.SIGTERM)
    for s in sides:
        if s.proc.returncode:
            raise SystemExit(f"run {s.name} failed ({s.proc.returncode}); see {tmp / s.name / 'train.log'}")
    wall = time.time() - t0
    print(f"`train --preset cpu-demo`, {args.steps} steps each, time-sliced ({args.slice:.0f} s turns); "
          f"{cpu_name()}; A = {Path(args.a).resolve()}, B = {Path(args.b).resolve()}; wall {wall:.0f} s for both\n")
    a_steps, b_steps = sides[0].active(), sides[1].active()
    (tmp / "steps.json").write_text(json.dumps({"A": a_steps, "B": b_steps}, indent=1))
    if min(len(a_steps), len(b_steps)) < args.steps:
        print(f"(a run stopped early: A has {len(a_steps)} steps, B {len(b_steps)}; see the train.log files)\n")
    print("| step | A step | A play | A learn | A tokens | B step | B play | B learn | B tokens | B / A |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for a, b in zip(a_steps, b_steps):
        print(f"| {a['n']} | " + " | ".join(f"{x['step']:.1f} s | {x['play']:.1f} s | {x['learn']:.1f} s | {x['tokens']}"
                                           for x in (a, b)) + f" | {b['step'] / a['step']:.2f}x |")
    later = slice(1, 5)
    if len(a_steps) > 1:
        ma = statistics.median(x["step"] for x in a_steps[later])
        mb = statistics.median(x["step"] for x in b_steps[later])
        print(f"| median 2-5 | {ma:.1f} s | | | | {mb:.1f} s | | | | {mb / ma:.2f}x |")
    if args.keep is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
