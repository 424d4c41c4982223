"""The Policy protocol: batched chat generation that returns text plus token ids.

The game and the learner only see this protocol, so the loop never branches on a backend.
Token ids are what the learner needs to score the sampled response; backends that cannot
return them (remote endpoints) leave them empty and can be used for play and eval only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = dict[str, str]


@dataclass(frozen=True)
class Turn:
    """What a policy is asked to continue: chat messages plus an optional assistant prefix that the
    backend appends after the chat template's generation prompt (game/prompts.py builds them)."""

    messages: list[Message]
    prefix: str = ""
    """Text the assistant's reply starts with (e.g. the CoT primer); not part of the completion."""

    def clip_longest(self, clip: Callable[[str], str]) -> Turn:
        """This turn with `clip` applied to its longest message: the one holding the seed or the
        prompt, which is what can be arbitrarily long (policy backends fit turns to a budget)."""
        i = max(range(len(self.messages)), key=lambda k: len(self.messages[k]["content"]))
        messages = [dict(m) for m in self.messages]
        messages[i]["content"] = clip(messages[i]["content"])
        return Turn(messages, self.prefix)


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    """Strings that end a completion; the stop string itself stays in the output."""


@dataclass
class Generation:
    text: str
    """The completion only (after any assistant prefix)."""
    prompt_ids: list[int] = field(default_factory=list)
    """Token ids of the full prompt, chat template and prefix included."""
    completion_ids: list[int] = field(default_factory=list)
    finish_reason: str = "stop"
    """`stop` (EOS) or `length` (hit max_new_tokens)."""
    logprobs: list[float] | None = None
    """log pi(token) of each completion token under the sampling model with its logits divided by
    the sampling temperature (the learner's "old" log-probs, saving it a forward pass); None when
    the backend cannot say. top-p truncation is not reflected: keep top_p=1 for exact on-policy RL."""
    trunk_states: Any = None
    """[len(prompt_ids) + len(completion_ids), H] hidden states after the layer the sampler was
    asked to capture (the learner's frozen trunk), so the learner need not recompute them; the
    last row is zeros (the final token is never fed back). None unless asked for."""


@runtime_checkable
class Policy(Protocol):
    name: str

    def generate(self, turns: list[Turn], params: SamplingParams) -> list[Generation]:
        """One completion per turn, in order."""
        ...


class MeteredPolicy:
    """Wraps a Policy to count generated tokens and seconds (for tokens/s in summaries)."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = inner.name
        self.truncation = getattr(inner, "truncation", None)
        """The inner backend's prompt-budget counter (budget.py), when it has one."""
        self.seconds = 0.0
        self.tokens = 0

    def generate(self, turns: list[Turn], params: SamplingParams) -> list[Generation]:
        import time

        t0 = time.perf_counter()
        out = self.inner.generate(turns, params)
        self.seconds += time.perf_counter() - t0
        # Remote backends return no ids: fall back to a ~4 characters/token estimate.
        self.tokens += sum(len(g.completion_ids) or max(1, len(g.text) // 4) for g in out)
        return out

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0
