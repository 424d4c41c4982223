"""Test doubles for unit tests only (never used by the package): a scripted policy and judge."""

from __future__ import annotations

from selfredteam.game.prompts import Turn
from selfredteam.judges.base import Judgement
from selfredteam.policy.base import Generation, SamplingParams


class FakePolicy:
    """Returns a scripted completion per role; records the turns it saw."""

    name = "fake-policy"

    def __init__(self, attacker_text: str, defender_text: str) -> None:
        self.attacker_text, self.defender_text = attacker_text, defender_text
        self.calls: list[list[Turn]] = []

    def generate(self, turns: list[Turn], params: SamplingParams) -> list[Generation]:
        self.calls.append(turns)
        out = []
        for t in turns:
            is_attacker = "red-teaming" in t.messages[0]["content"]
            out.append(Generation(self.attacker_text if is_attacker else self.defender_text, [1, 2], [3, 4]))
        return out


class FakeJudge:
    """Labels every pair with fixed labels, or a parse error for prompts containing 'UNPARSEABLE'."""

    judge_id = "fake-judge"

    def __init__(self, ph=True, rr=True, rh=False) -> None:
        self.labels = (ph, rr, rh)
        self.seen: list[tuple[str, str | None]] = []

    def judge(self, pairs):
        self.seen += pairs
        return [Judgement(None, None, None, parse_error=True) if "UNPARSEABLE" in p else Judgement(*self.labels)
                for p, _ in pairs]
