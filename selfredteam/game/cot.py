"""Hidden chain-of-thought format: check and extract (method.md, "Hidden chain of thought").

With CoT on, a role's generation is primed with `COT_PRIMER`, so the model's *completion*
starts inside an opened `<think>`. A valid completion is

    <reasoning></think><answer><final answer></answer>

with exactly one `</think>`, the `<answer>` right after it (only whitespace between), the text
ending with `</answer>`, no second `<think>`, and neither part empty. Only the answer is shown
to the opponent and the judge; a violation costs -1 reward but the best-effort answer is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

COT_PRIMER = "Let's think step by step.\n<think>"

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
ANSWER_CLOSE = _ANSWER_CLOSE
_ANSWER_RE = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)


@dataclass(frozen=True)
class CotParse:
    answer: str
    """What the opponent and judge see."""
    thought: str | None
    violation: str | None
    """None when the format is valid, else a short reason (for logging)."""

    @property
    def valid(self) -> bool:
        return self.violation is None


def check_cot(completion: str) -> str | None:
    """Return None if `completion` follows the CoT format, else the first rule it breaks."""
    if completion.count(_THINK_CLOSE) != 1:
        return f"expected exactly one {_THINK_CLOSE}, found {completion.count(_THINK_CLOSE)}"
    if _THINK_OPEN in completion:
        return f"a second {_THINK_OPEN} was opened"
    thought, _, rest = completion.partition(_THINK_CLOSE)
    rest = rest.strip()
    if not rest.startswith(_ANSWER_OPEN):
        return f"{_ANSWER_OPEN} must follow {_THINK_CLOSE} immediately"
    if not rest.endswith(_ANSWER_CLOSE):
        return f"output must end with {_ANSWER_CLOSE}"
    if rest.count(_ANSWER_OPEN) != 1 or rest.count(_ANSWER_CLOSE) != 1:
        return "expected exactly one <answer>...</answer> block"
    if not thought.strip():
        return "empty thinking"
    if not rest[len(_ANSWER_OPEN) : -len(_ANSWER_CLOSE)].strip():
        return "empty answer"
    return None


def extract_answer(completion: str) -> str:
    """Best-effort answer: the <answer> body, else the text after </think>, else the raw text."""
    after = completion.split(_THINK_CLOSE, 1)[1] if _THINK_CLOSE in completion else completion
    m = _ANSWER_RE.search(after) or _ANSWER_RE.search(completion)
    if m and m.group(1).strip():
        return m.group(1).strip()
    if _THINK_CLOSE in completion and after.strip():
        return after.replace(_ANSWER_OPEN, "").replace(_ANSWER_CLOSE, "").strip()
    return completion.strip()


def answer_cut_off(completion: str) -> bool:
    """The completion breaks the format only by lacking the final `</answer>`: it would be valid if
    `</answer>` had fit (the caller checks that the token budget, not the model, ended it)."""
    return check_cot(completion) is not None and check_cot(completion.rstrip() + _ANSWER_CLOSE) is None


def parse_cot(completion: str) -> CotParse:
    violation = check_cot(completion)
    thought = completion.split(_THINK_CLOSE, 1)[0].strip() if _THINK_CLOSE in completion else None
    return CotParse(answer=extract_answer(completion), thought=thought, violation=violation)


def parse_direct(completion: str) -> CotParse:
    """No-CoT ablation: the whole completion is the answer; there is no format to violate."""
    return CotParse(answer=completion.strip(), thought=None, violation=None)
