"""Inputs longer than a model's budget: cut in the middle, counted, and warned about once.

A prompt of 100,000 characters makes a CPU prefill run for many minutes (attention is quadratic)
and an endpoint reject the request. Every command therefore bounds what it sends: the policy's
prompt to `generation.max_prompt_length` tokens, the judge's prompt and response to
`judge.max_input_chars` characters each.

Why the middle: a jailbreak usually sets its frame at the start and states its request at the
end, and our own instructions (the CoT format line) close the user message; keeping both ends
keeps all three. The cut is marked in the text, so neither the model nor a reader takes it for
the original. Each cut is counted (summaries and metrics carry the count) and the first one
per counter is logged as a warning naming the setting to raise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger("selfredteam")

CUT_MARKER = "\n[... cut to fit the input budget ...]\n"
T = TypeVar("T")


def keep_ends(items: Sequence[T], keep: int) -> tuple[Sequence[T], Sequence[T]]:
    """The first ceil(keep/2) and the last floor(keep/2) items."""
    head = (keep + 1) // 2
    tail = keep - head
    return items[:head], (items[len(items) - tail:] if tail else items[:0])


def clip_middle(text: str, max_chars: int) -> str:
    """`text` itself when it fits in `max_chars`, else its two ends around `CUT_MARKER`."""
    if len(text) <= max_chars:
        return text
    head, tail = keep_ends(text, max(0, max_chars - len(CUT_MARKER)))
    return f"{head}{CUT_MARKER}{tail}"


@dataclass
class TruncationCounter:
    """How many inputs of one kind were cut to fit `limit` `unit` (the config key `setting`)."""

    what: str
    """e.g. "policy prompt" or "judge input"."""
    setting: str
    limit: int
    unit: str
    count: int = 0

    def record(self, length: int) -> None:
        """Count one cut input of `length` units; the first cut is logged as a warning."""
        if self.count == 0:
            log.warning(
                "A %s of %d %s is longer than %s=%d; it was cut in the middle (start and end kept). "
                "Further cuts are counted, not repeated here; raise %s to send more.",
                self.what, length, self.unit, self.setting, self.limit, self.setting,
            )
        self.count += 1

    def summary(self) -> str | None:
        """One line for the end of a command, or None when nothing was cut."""
        if not self.count:
            return None
        plural = "s were" if self.count > 1 else " was"
        return (f"{self.count} {self.what}{plural} cut to {self.setting}={self.limit} {self.unit} "
                "(start and end kept).")
