"""Where a step's time goes: named phases timed with one context manager, the way verl marks the
phases of its trainer, so the loop and the learner read as their phases rather than as
`perf_counter` arithmetic. The sums land in the metrics as `timing/<phase>_s`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator


class Timings:
    """Seconds per phase, summed over repeats (a phase timed once per train batch adds up)."""

    def __init__(self, phases: Iterable[str] = ()) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(phases, 0.0)
        """Phases named up front are reported even when they never ran (0 s), so every step's
        metrics row has the same keys."""

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        return {f"timing/{phase}_s": s for phase, s in self.seconds.items()}
