"""OpenAI-compatible policy backend against a local stub server (no network), and dtype choice."""

import pytest

from selfredteam.config import ModelConfig
from selfredteam.game.prompts import defender_turn
from selfredteam.policy.base import SamplingParams
from selfredteam.policy.openai_compat import OpenAIChatPolicy
from tests.fakes import local_server


@pytest.fixture
def chat_server():
    state = {"seen": [], "fail_first": 0}

    def reply(path, body, headers):
        state["seen"].append(body)
        if state["fail_first"] > 0:
            state["fail_first"] -= 1
            return 503, None
        last = body["messages"][-1]
        text = (last["content"] if last["role"] == "assistant" else "") + " ok </think><answer>hi</answer>"
        return 200, {"choices": [{"message": {"content": text}, "finish_reason": "stop"}]}

    with local_server(reply) as url:
        yield url, state


def test_openai_policy_continues_the_cot_primer(chat_server):
    url, state = chat_server
    policy = OpenAIChatPolicy.from_config(ModelConfig(backend="openai", base_url=url, name_or_path="m"))
    policy.client.backoff_s = 0.01
    state["fail_first"] = 1  # one 503, then success: retried with backoff
    gens = policy.generate([defender_turn("Hello?", cot=True)] * 3, SamplingParams(16, 0.7, 0.9))
    assert [g.text for g in gens] == [" ok </think><answer>hi</answer>"] * 3
    body = state["seen"][-1]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["messages"][-1]["role"] == "assistant" and body["messages"][-1]["content"].endswith("<think>")
    assert body["max_tokens"] == 16 and body["temperature"] == 0.7 and body["top_p"] == 0.9


def test_openai_policy_without_cot_sends_plain_chat(chat_server):
    url, state = chat_server
    policy = OpenAIChatPolicy.from_config(ModelConfig(backend="openai", base_url=url, name_or_path="m"))
    policy.generate([defender_turn("Hello?", cot=False)], SamplingParams(8))
    assert "continue_final_message" not in state["seen"][-1]


def test_cpu_dtype_is_fp32_without_native_bf16(monkeypatch):
    import torch

    from selfredteam.policy import hf

    monkeypatch.setattr(hf, "cpu_has_native_bf16", lambda: False)
    assert hf.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(hf, "cpu_has_native_bf16", lambda: True)
    assert hf.resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    assert hf.resolve_dtype("float16", torch.device("cpu")) == torch.float16
