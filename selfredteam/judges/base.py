"""The Judge protocol: label (prompt, response) pairs with WildGuard's three labels.

A label is True/False, or None when the judge gave none (a tie for that reward term). A pair
whose judge output could not be parsed has `parse_error=True`; the game drops it from rewards
and counts it, never silently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from selfredteam.budget import TruncationCounter, clip_middle


@dataclass(frozen=True)
class Judgement:
    prompt_harmful: bool | None
    response_refusal: bool | None
    response_harmful: bool | None
    parse_error: bool = False
    raw: str | None = None
    """The judge's raw output (for generative judges), kept for debugging parse errors."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("raw")
        return d


PARSE_ERROR = Judgement(None, None, None, parse_error=True)


@runtime_checkable
class Judge(Protocol):
    judge_id: str
    """Identifies the judge and its weights/template; part of the cache key."""

    def judge(self, pairs: list[tuple[str, str | None]]) -> list[Judgement]:
        """One Judgement per (prompt, response); response None = classify the prompt only."""
        ...


class ClippedJudge:
    """Any judge with its prompt and response cut to `max_chars` each (middle cut, counted).

    A 100,000-character prompt would overflow WildGuard's context (the endpoint rejects it) and
    cost the embedded encoder tokenising text it never reads."""

    def __init__(self, inner: Judge, max_chars: int) -> None:
        self.inner = inner
        self.judge_id = inner.judge_id
        self.truncation = TruncationCounter("judge input", "judge.max_input_chars", max_chars, "characters")

    def _clip(self, text: str | None) -> str | None:
        if text is None or len(text) <= self.truncation.limit:
            return text
        self.truncation.record(len(text))
        return clip_middle(text, self.truncation.limit)

    def judge(self, pairs: list[tuple[str, str | None]]) -> list[Judgement]:
        return self.inner.judge([(self._clip(p) or "", self._clip(r)) for p, r in pairs])
