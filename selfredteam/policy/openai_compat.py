"""`openai` policy backend: any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, APIs).

The CoT primer is sent as a final, unfinished assistant message with vLLM's
`continue_final_message` flag, so the model continues inside the opened `<think>`. Servers
that ignore the flag still work, but the primer is then only a hint. Remote endpoints return
no token ids, so this backend serves play, attack and eval, not the learner. Without the
server's tokenizer, the prompt budget is counted at 4 characters a token.
"""

from __future__ import annotations

from selfredteam.budget import TruncationCounter, clip_middle
from selfredteam.config import ModelConfig
from selfredteam.game.prompts import Turn
from selfredteam.http import OpenAIClient
from selfredteam.policy.base import Generation, SamplingParams

CHARS_PER_TOKEN = 4


class OpenAIChatPolicy:
    def __init__(self, client: OpenAIClient, model: str, max_prompt_tokens: int = 0) -> None:
        self.client = client
        self.name = model
        self.truncation = TruncationCounter("policy prompt", "generation.max_prompt_length",
                                            max_prompt_tokens * CHARS_PER_TOKEN, "characters")

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

    def _one(self, turn: Turn, params: SamplingParams) -> Generation:
        turn = self.fit(turn)
        messages = list(turn.messages)
        payload: dict = {
            "model": self.name,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:  # vLLM's extension keeps the stop string, which the CoT format check needs
            payload.update(stop=list(params.stop), include_stop_str_in_output=True)
        if turn.prefix:
            messages.append({"role": "assistant", "content": turn.prefix})
            payload.update(continue_final_message=True, add_generation_prompt=False)
        payload["messages"] = messages
        data = self.client.post("chat/completions", payload)
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
        # Some servers echo the continued prefix; the completion is what comes after it.
        if turn.prefix and text.startswith(turn.prefix):
            text = text[len(turn.prefix):]
        return Generation(text=text, finish_reason=choice.get("finish_reason") or "stop")

    def generate(self, turns: list[Turn], params: SamplingParams) -> list[Generation]:
        return self.client.map(lambda t: self._one(t, params), turns)
