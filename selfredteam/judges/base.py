"""The Judge protocol: label (prompt, response) pairs with WildGuard's three labels.

A label is True/False, or None when the judge gave none (a tie for that reward term). A pair
whose judge output could not be parsed has `parse_error=True`; the game drops it from rewards
and counts it, never silently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable


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
