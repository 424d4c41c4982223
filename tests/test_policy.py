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


def test_cpu_dtype_follows_native_bf16_and_says_why(monkeypatch):
    import torch

    from selfredteam.policy import hf

    cpu = torch.device("cpu")
    monkeypatch.setattr(hf, "cpu_bf16_flags", lambda: [])
    assert hf.choose_dtype("auto", cpu) == (torch.float32, hf.choose_dtype("auto", cpu)[1])
    assert "no native bf16" in hf.choose_dtype("auto", cpu)[1]
    monkeypatch.setattr(hf, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    assert hf.choose_dtype("auto", cpu) == (torch.bfloat16, "bf16: CPU has avx512_bf16")
    assert hf.choose_dtype("float16", cpu) == (torch.float16, "fp16: set by model.dtype")
    assert hf.resolve_dtype("float32", cpu) == torch.float32


def test_runtime_info_names_device_dtype_and_reason():
    from selfredteam.policy.runtime import describe, runtime_info

    info = runtime_info(ModelConfig(dtype="bfloat16"), threads=2)
    assert info["device"] in ("cpu", "cuda") and info["dtype"] == "bfloat16" and info["why"] == "bf16: set by model.dtype"
    assert "dtype bfloat16 (bf16: set by model.dtype" in describe(info)
    remote = runtime_info(ModelConfig(backend="openai", base_url="http://127.0.0.1:8000/v1"))
    assert remote["device"] == "remote endpoint" and "127.0.0.1:8000" in describe(remote)


def test_cpu_name_carries_family_and_model():
    """Two VMs both reporting `AMD EPYC` ran the same step 2x apart; the numbers tell them apart."""
    from selfredteam.policy.runtime import cpu_name

    block = "processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: {f}\nmodel\t\t: {m}\nmodel name\t: AMD EPYC\n"
    two = block.format(n=0, f=23, m=1) + "\n" + block.format(n=1, f=25, m=17)
    assert cpu_name(two) == "AMD EPYC, family 23 model 1"  # the first processor's block
    assert cpu_name("model name\t: Apple M2\n") == "Apple M2"  # no family line: the name alone
    assert cpu_name("")  # no /proc/cpuinfo: platform's processor or machine
    assert cpu_name().strip()


def test_openai_policy_falls_back_to_plain_requests_and_rebuilds_the_cot():
    """A server that refuses vLLM's fields (transformers serve answers 422) gets plain OpenAI
    requests; its split-off reasoning and its dropped stop string are put back for the parser."""
    seen = []

    def reply(path, body, headers):
        seen.append(body)
        if "continue_final_message" in body:
            return 422, {"detail": "Unexpected fields in the request: {'continue_final_message'}"}
        return 200, {"choices": [{"message": {"content": "<answer>hi", "reasoning_content": "plan"},
                                  "finish_reason": "stop"}]}

    with local_server(reply) as url:
        policy = OpenAIChatPolicy.from_config(ModelConfig(backend="openai", base_url=url, name_or_path="m"))
        gens = policy.generate([defender_turn("Hello?", cot=True)] * 2, SamplingParams(16, 0.7, 1.0, ("</answer>",)))
    assert policy.portable and [g.text for g in gens] == ["plan</think><answer>hi</answer>"] * 2
    plain = seen[-1]
    assert "continue_final_message" not in plain and "include_stop_str_in_output" not in plain
    assert plain["messages"][-1]["role"] == "user" and plain["stop"] == ["</answer>"]
    from selfredteam.game.cot import parse_cot

    assert parse_cot(gens[0].text).valid


def test_attn_implementation_reaches_transformers_and_a_wrong_one_is_a_clear_error(tiny_model_dir):
    """`model.attn_implementation` picks the kernel (eager: the reference to compare sdpa with, e.g.
    on a device whose kernel misbehaves), computes the same logits, is recorded in runtime.json,
    and a name transformers does not know stops with the key named."""
    import torch

    from selfredteam.errors import UserError
    from selfredteam.policy.hf import load_model_and_tokenizer
    from selfredteam.policy.runtime import runtime_info

    cpu, path = torch.device("cpu"), str(tiny_model_dir)
    eager, _ = load_model_and_tokenizer(ModelConfig(name_or_path=path, attn_implementation="eager"), cpu, torch.float32)
    default, _ = load_model_and_tokenizer(ModelConfig(name_or_path=path), cpu, torch.float32)
    assert eager.config._attn_implementation == "eager" and default.config._attn_implementation == "sdpa"
    ids, mask = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]]), torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        a, b = (m(input_ids=ids, attention_mask=mask).logits for m in (eager, default))
    assert torch.allclose(a[mask.bool()], b[mask.bool()], atol=1e-5)
    assert runtime_info(ModelConfig(attn_implementation="eager"))["attn_implementation"] == "eager"
    assert "attn_implementation" not in runtime_info(ModelConfig())
    with pytest.raises(UserError, match="model.attn_implementation='no-such-kernel' cannot load"):
        load_model_and_tokenizer(ModelConfig(name_or_path=path, attn_implementation="no-such-kernel"), cpu, torch.float32)
