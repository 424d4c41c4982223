"""Resumable phases: each long step of an experiment writes its result file when it finishes, and
a re-run skips every phase whose file exists. Ctrl-C therefore loses at most the phase in
progress (a `train` phase keeps its checkpoint: it resumes). A progress callback gets the phase,
how many are done and an ETA from the durations of the phases finished so far.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfredteam.fsutil import write_text_atomic

Progress = Callable[[str, int, int, float | None], None]
"""(description of the phase starting, phases done, phases in all, ETA in seconds or None)."""


@dataclass
class Phase:
    name: str
    """Shown in the progress line, e.g. `selfplay / seed 0 / train`."""
    kind: str
    """train | eval | diversity | exploit | ...: phases of one kind take about as long (ETA)."""
    result: Path
    """Written (JSON) when the phase finishes; its existence marks the phase done."""
    run: Callable[[], dict[str, Any]]
    guess_s: float = 60.0
    """A duration guess for the ETA until a phase of this kind has finished once."""

    @property
    def done(self) -> bool:
        return self.result.is_file()

    def load(self) -> dict[str, Any]:
        return json.loads(self.result.read_text())


def run_phases(phases: list[Phase], progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """Run the phases not done yet, in order; return every phase's result by name."""
    took: dict[str, list[float]] = {}
    results = {}
    for i, phase in enumerate(phases):
        if not phase.done:
            if progress:
                progress(phase.name, i, len(phases), _eta(phases[i:], took))
            t0 = time.perf_counter()
            out = phase.run()
            took.setdefault(phase.kind, []).append(time.perf_counter() - t0)
            phase.result.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(phase.result, json.dumps(out, indent=2) + "\n")
        results[phase.name] = phase.load()
    if progress:
        progress("done", len(phases), len(phases), 0.0)
    return results


def _eta(todo: list[Phase], took: dict[str, list[float]]) -> float:
    return sum(sum(took[p.kind]) / len(took[p.kind]) if took.get(p.kind) else p.guess_s for p in todo if not p.done)
