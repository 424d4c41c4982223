"""`openai` policy backend: any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, APIs).

The CoT primer is sent as a final, unfinished assistant message with vLLM's
`continue_final_message` flag, so the model continues inside the opened `<think>`, and
`</answer>` stops a turn with `include_stop_str_in_output`. A server that refuses these vLLM
fields (HTTP 400/422 naming them; `transformers serve` does) is then sent plain OpenAI requests
for the rest of the session: no primer (the format line still asks for the tags), and the
completion is rebuilt as the CoT parser expects it: a `reasoning_content` the server split off
goes back in front of `</think>`, a `<think>` the model opened itself is dropped, and a
`</answer>` removed as the stop string is put back. Remote endpoints return no token ids, so
this backend serves play, attack and eval, not the learner. Without the server's tokenizer, the
prompt budget is counted at 4 characters a token.
"""

from __future__ import annotations

import logging

from selfredteam.budget import TruncationCounter, clip_middle
from selfredteam.config import ModelConfig
from selfredteam.errors import EndpointRejected
from selfredteam.http import OpenAIClient
from selfredteam.policy.base import Generation, SamplingParams, Turn

CHARS_PER_TOKEN = 4
VLLM_FIELDS = ("continue_final_message", "add_generation_prompt", "include_stop_str_in_output")
_THINK_OPEN = "<think>"
"""Reasoning servers (vLLM's reasoning parsers) split off the text up to `</think>`."""


def restore_closing_stop(text: str, stop: tuple[str, ...], finish: str) -> str:
    """Put back a closing-tag stop string (`</answer>`) that OpenAI semantics dropped, when its
    opening tag was written: the local backends keep the stop string, and the CoT parser needs it."""
    if finish != "stop":
        return text
    for s in stop:
        if s.startswith("</") and s.endswith(">") and "<" + s[2:] in text and s not in text:
            return text + s
    return text
log = logging.getLogger("selfredteam")


class OpenAIChatPolicy:
    def __init__(self, client: OpenAIClient, model: str, max_prompt_tokens: int = 0) -> None:
        self.client = client
        self.name = model
        self.truncation = TruncationCounter("policy prompt", "generation.max_prompt_length",
                                            max_prompt_tokens * CHARS_PER_TOKEN, "characters")
        self.portable = False
        """Set once the server refused vLLM's extension fields: plain OpenAI requests from then on."""

    @classmethod
    def from_config(cls, cfg: ModelConfig, max_prompt_tokens: int = 0) -> OpenAIChatPolicy:
        client = OpenAIClient(cfg.base_url or "", cfg.api_key_env, cfg.timeout_s, cfg.max_retries,
                              cfg.max_concurrency, what="policy endpoint")
        return cls(client, cfg.name_or_path, max_prompt_tokens)

    def fit(self, turn: Turn) -> Turn:
        """The turn cut to the prompt budget (its longest message, in the middle)."""
        size = sum(len(m["content"]) for m in turn.messages)
        limit = self.truncation.limit
        if not limit or size <= limit:
            return turn
        self.truncation.record(size)
        return turn.clip_longest(lambda text: clip_middle(text, max(0, len(text) - (size - limit))))

    def _payload(self, turn: Turn, params: SamplingParams) -> dict:
        messages = list(turn.messages)
        payload: dict = {"model": self.name, "max_tokens": params.max_new_tokens,
                         "temperature": params.temperature, "top_p": params.top_p}
        if params.stop:
            payload["stop"] = list(params.stop)
            if not self.portable:  # vLLM keeps the stop string, which the CoT format check needs
                payload["include_stop_str_in_output"] = True
        if turn.prefix and not self.portable:
            messages.append({"role": "assistant", "content": turn.prefix})
            payload.update(continue_final_message=True, add_generation_prompt=False)
        payload["messages"] = messages
        return payload

    def _post(self, turn: Turn, params: SamplingParams) -> dict:
        if not self.portable:
            try:
                return self.client.post("chat/completions", self._payload(turn, params))
            except EndpointRejected as e:
                if e.status not in (400, 422) or not any(f in e.body for f in VLLM_FIELDS):
                    raise
                if not self.portable:
                    log.warning("The policy endpoint refused vLLM's request fields (%s); sending plain OpenAI "
                                "requests: the CoT primer becomes a format instruction only.", ", ".join(VLLM_FIELDS))
                self.portable = True
        return self.client.post("chat/completions", self._payload(turn, params))

    def _one(self, turn: Turn, params: SamplingParams) -> Generation:
        turn = self.fit(turn)
        choice = self._post(turn, params)["choices"][0]
        message, finish = choice["message"], choice.get("finish_reason") or "stop"
        text = message.get("content") or ""
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if reasoning:  # the server split the hidden thought off: put it back where the parser looks
            text = f"{reasoning}</think>{text}"
        # Some servers echo the continued prefix; the completion is what comes after it.
        if turn.prefix and text.startswith(turn.prefix):
            text = text[len(turn.prefix):]
        elif turn.prefix.endswith(_THINK_OPEN) and text.lstrip().startswith(_THINK_OPEN):
            text = text.lstrip()[len(_THINK_OPEN):]  # no primer sent: the model opened <think> itself
        return Generation(text=restore_closing_stop(text, params.stop, finish), finish_reason=finish)

    def generate(self, turns: list[Turn], params: SamplingParams) -> list[Generation]:
        return self.client.map(lambda t: self._one(t, params), turns)
