"""train.rollout_engine=vllm against a loopback stand-in for a vLLM server: the request sequence
(prompt token ids in, sampled token ids out, adapter-only LoRA sync by name) and a sync timeout
that raises with a checkpoint instead of hanging. (vLLM itself cannot be installed here.)"""

import time
from pathlib import Path

import pytest

from selfredteam.errors import EndpointError
from selfredteam.rl.loop import train
from tests.fakes import FakeJudge, local_server
from tests.rl.test_loop import cfg_for, read_metrics


@pytest.fixture
def fake_vllm(tiny_model_dir):
    """Test double for a vLLM server: records requests; completions return real token ids."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    text = " a plan </think><answer>Here is an answer.</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    state = {"requests": [], "load_delay": 0.0}

    def reply(path, body, headers):
        state["requests"].append((path, body))
        if path.endswith("/load_lora_adapter"):
            time.sleep(state["load_delay"])
            assert Path(body["lora_path"], "adapter_model.safetensors").is_file()  # written before the load
            return 200, None
        if path.endswith("/unload_lora_adapter"):
            return 200, None
        assert isinstance(body["prompt"], list) and all(isinstance(i, int) for i in body["prompt"])
        return 200, {"choices": [{"text": text, "token_ids": ids, "finish_reason": "stop"}]}

    with local_server(reply) as url:
        yield url, state


def vllm_cfg(model_dir, url, *extra, steps=2):
    return cfg_for(model_dir, "train.rollout_engine=vllm", f"train.vllm_base_url={url}", "train.vllm_model=served-base",
                   "train.sft.coef=0", *extra, steps=steps)


def test_vllm_rollouts_sync_only_the_adapter_by_name(tiny_model_dir, tmp_path, fake_vllm):
    url, state = fake_vllm
    out = tmp_path / "run"
    train(vllm_cfg(tiny_model_dir, url), out, judge=FakeJudge(), log=lambda *a: None)
    seq = [(p.rsplit("/", 1)[-1], b.get("model") or b.get("lora_name")) for p, b in state["requests"]]
    models = [m for p, m in seq if p == "completions"]
    loads = [(p, m) for p, m in seq if p != "completions"]
    assert set(models[:6]) == {"served-base"}  # step 1 samples the base model (6 turns: 2 attacker + 4 defender)
    assert loads == [("load_lora_adapter", "selfredteam-step1"), ("load_lora_adapter", "selfredteam-step2"),
                     ("unload_lora_adapter", "selfredteam-step1")]
    first_load = seq.index(("load_lora_adapter", "selfredteam-step1"))
    assert {m for p, m in seq[first_load + 1:] if p == "completions"} == {"selfredteam-step1"}
    assert [r["step"] for r in read_metrics(out)] == [1, 2] and read_metrics(out)[-1]["loss/grad_norm"] > 0
    assert not (out / "rollout_adapters" / "step_1").exists() and (out / "rollout_adapters" / "step_2").is_dir()


def test_a_slow_adapter_load_raises_with_a_checkpoint(tiny_model_dir, tmp_path, fake_vllm):
    url, state = fake_vllm
    state["load_delay"] = 5.0
    out = tmp_path / "run"
    t0 = time.perf_counter()
    with pytest.raises(EndpointError, match="did not load LoRA adapter selfredteam-step1 .* within "
                                            "train.vllm_sync_timeout_s=1.0"):
        train(vllm_cfg(tiny_model_dir, url, "train.vllm_sync_timeout_s=1", "model.max_retries=0"), out,
              judge=FakeJudge(), log=lambda *a: None)
    assert time.perf_counter() - t0 < 60
    assert (out / "checkpoints" / "latest").read_text() == "step_1"
