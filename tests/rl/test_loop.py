"""The training loop end to end on a tiny real transformer: role modes, resume, bad input."""

import json

import pytest
import torch

from selfredteam.checkpoint import find_checkpoint
from selfredteam.config import load_config
from selfredteam.errors import UserError
from selfredteam.rl.loop import train
from tests.fakes import FakeJudge


def cfg_for(model_dir, *extra, steps=2):
    # The defender's budget holds the preset's SFT targets (they are fitted to it, whole sentences).
    return load_config("cpu-demo", overrides=[
        f"model.name_or_path={model_dir}", f"train.steps={steps}", "train.rollout_batch_size=4",
        "train.train_batch_size=4", "train.micro_batch_size=2", "train.save_every=1", "train.lr=1e-3",
        "generation.attacker_max_new_tokens=6", "generation.defender_max_new_tokens=48", *extra])


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("extra", [
    [],                                          # self-play, CoT
    ["train.role_mode=attacker-only"],
    ["train.role_mode=defender-only"],
    ["game.cot=false"],
    ["train.parameter_sharing=role-adapters"],
])
def test_role_modes_run_two_steps(tiny_model_dir, tmp_path, extra):
    out = tmp_path / "run"
    last = train(cfg_for(tiny_model_dir, *extra), out, judge=FakeJudge(), log=lambda *a: None)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert "loss/policy" in last and "timing/learn_s" in last and "game/asr" in last
    assert (out / "checkpoints" / "latest").read_text() == "step_2"
    assert (out / "games" / "step_2.jsonl").is_file() and (out / "config.yaml").is_file()
    if "train.role_mode=defender-only" in extra:
        assert all(not json.loads(x)["revised"] for x in (out / "games" / "step_1.jsonl").read_text().splitlines())


@pytest.mark.parametrize("extra", [[], ["train.full_finetune=true"]], ids=["lora", "full"])
def test_resume_reproduces_the_next_step_exactly(tiny_model_dir, tmp_path, extra):
    """LoRA adapters, or full weights (the paper-8b preset's mode; they load back as the policy
    model, through the policy's own loader, `build_trainable(..., ckpt=...)`)."""
    full, part = tmp_path / "full", tmp_path / "part"
    train(cfg_for(tiny_model_dir, *extra, steps=3), full, judge=FakeJudge(), log=lambda *a: None)
    train(cfg_for(tiny_model_dir, *extra, steps=2), part, judge=FakeJudge(), log=lambda *a: None)
    assert (part / "checkpoints" / "step_2" / ("model" if extra else "adapter")).is_dir()
    train(cfg_for(tiny_model_dir, *extra, steps=3), part, resume=part, judge=FakeJudge(), log=lambda *a: None)
    a, b = read_metrics(full)[-1], read_metrics(part)[-1]
    assert a["step"] == b["step"] == 3
    for key in ("loss/policy", "kl/mean", "reward/defender_mean", "loss/grad_norm"):
        assert a[key] == b[key], key
    assert (full / "games" / "step_3.jsonl").read_text() == (part / "games" / "step_3.jsonl").read_text()


def test_full_finetune_resume_loads_the_checkpoint_as_the_policy(tiny_model_dir, tmp_path, monkeypatch):
    """A full fine-tune resumes with two models in memory, as a fresh run has: the base as loaded is
    the reference, the checkpoint's weights are the policy. No copy of the base is made to be
    overwritten (a third model, 16 GB more for paper-8b's)."""
    from transformers import AutoModelForCausalLM

    from selfredteam.rl import model as model_mod
    from selfredteam.rl.model import build_trainable

    cfg = cfg_for(tiny_model_dir, "train.full_finetune=true", steps=1)
    run = tmp_path / "run"
    train(cfg, run, judge=FakeJudge(), log=lambda *a: None)
    ckpt = find_checkpoint(run)

    deepcopy = model_mod.copy.deepcopy

    def no_model_copy(x, *a, **kw):
        if isinstance(x, torch.nn.Module):
            raise AssertionError("the base model was copied on resume")
        return deepcopy(x, *a, **kw)

    monkeypatch.setattr(model_mod.copy, "deepcopy", no_model_copy)
    policy = build_trainable(cfg, ckpt=ckpt)
    dtype = next(policy.model.parameters()).dtype  # what model.dtype=auto picked on this CPU
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=dtype).state_dict()
    saved = AutoModelForCausalLM.from_pretrained(str(ckpt / "model"), dtype=dtype, use_safetensors=True).state_dict()
    ref, pol = policy._reference.state_dict(), policy.model.state_dict()
    assert all(torch.equal(ref[k], base[k]) for k in base)
    assert all(torch.equal(pol[k], saved[k]) for k in saved)
    assert any(not torch.equal(base[k], saved[k]) for k in base)  # the step changed the weights
    assert policy.model.training and not policy._reference.training
    assert not any(p.requires_grad for p in policy._reference.parameters())
    assert all(p.requires_grad for p in policy.trainable_parameters())


def test_resume_without_latest_continues_from_the_newest_complete_step(tiny_model_dir, tmp_path):
    """A kill between renaming step_2 into place and writing `latest` (or a torn temp dir beside it)
    must not cost the step: --resume takes step_2 and says so."""
    full, part = tmp_path / "full", tmp_path / "part"
    train(cfg_for(tiny_model_dir, steps=3), full, judge=FakeJudge(), log=lambda *a: None)
    train(cfg_for(tiny_model_dir, steps=2), part, judge=FakeJudge(), log=lambda *a: None)
    (part / "checkpoints" / "latest").unlink()
    torn = part / "checkpoints" / ".step_3-killed"
    torn.mkdir()
    (torn / "state.json").write_text('{"step": 3}')
    with open(part / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss/pol')  # step 3's row, cut short by the same kill
    heard = []
    train(cfg_for(tiny_model_dir, steps=3), part, resume=part, judge=FakeJudge(), log=heard.append)
    assert any("taking the newest complete checkpoint, step_2" in str(x) for x in heard), heard
    assert any("at step 2" in str(x) for x in heard), heard
    assert [r["step"] for r in read_metrics(part)] == [1, 2, 3]
    assert read_metrics(full)[-1]["loss/policy"] == read_metrics(part)[-1]["loss/policy"]
    assert (part / "checkpoints" / "latest").read_text() == "step_3" and not torn.exists()


def test_bad_resume_touches_nothing(tiny_model_dir, tmp_path):
    out = tmp_path / "new"
    with pytest.raises(UserError, match="does not exist"):
        train(cfg_for(tiny_model_dir), out, resume=tmp_path / "missing", judge=FakeJudge())
    assert not out.exists()
    src = tmp_path / "src"
    train(cfg_for(tiny_model_dir, steps=1), src, judge=FakeJudge(), log=lambda *a: None)
    other = load_config("cpu-demo", overrides=["model.name_or_path=embedded"])
    with pytest.raises(UserError, match="trained from model"):
        train(other, out, resume=src, judge=FakeJudge())
    assert not out.exists()


def test_export_merged_loads_in_transformers(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from selfredteam.policy.spec import export_merged

    run = tmp_path / "run"
    train(cfg_for(tiny_model_dir, steps=1), run, judge=FakeJudge(), log=lambda *a: None)
    path = export_merged(run, tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True)
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_auxiliary_sft_loss(tiny_model_dir, tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text('{"prompt": "What is 2+2?", "response": "4."}\n{"prompt": "Name a colour.", "response": "Blue."}\n')
    out = tmp_path / "run"
    last = train(cfg_for(tiny_model_dir, f"train.sft.data={data}", "train.sft.coef=0.5", steps=1), out,
                 judge=FakeJudge(), log=lambda *a: None)
    assert last["loss/sft_nll"] > 0


def _start_cli_run(out, model_dir, steps=1000, save_every=1000, extra=()):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "selfredteam.cli", "train", "--out", str(out),
           "--set", f"model.name_or_path={model_dir}", "--set", f"train.steps={steps}",
           "--set", f"train.save_every={save_every}", "--set", "train.rollout_batch_size=4",
           "--set", "train.train_batch_size=4", "--set", "train.micro_batch_size=2",
           "--set", "generation.attacker_max_new_tokens=4", "--set", "generation.defender_max_new_tokens=48", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})


def _wait_for(path, proc, timeout=300):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and not path.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.5)
    assert path.exists()


def test_sigterm_saves_a_checkpoint_and_exits(tiny_model_dir, tmp_path):
    import signal

    out = tmp_path / "run"
    proc = _start_cli_run(out, tiny_model_dir)
    _wait_for(out / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    assert proc.returncode == 0
    latest = (out / "checkpoints" / "latest").read_text()
    assert latest.startswith("step_") and int(latest[5:]) < 1000


def test_kill_9_then_resume_continues_from_last_checkpoint(tiny_model_dir, tmp_path):
    import signal

    out = tmp_path / "run"
    proc = _start_cli_run(out, tiny_model_dir, steps=6, save_every=2)
    _wait_for(out / "checkpoints" / "step_2" / "state.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    # The kill may land before `latest` names step_2: read what a resume will read.
    done = int(find_checkpoint(out).name[5:])
    assert done >= 2
    proc = _start_cli_run(out, tiny_model_dir, steps=6, save_every=2, extra=["--resume", str(out)])
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # rows after the checkpoint were redone, not duplicated
    assert (out / "checkpoints" / "latest").read_text() == "step_6"


# Tolerances per compute dtype, for the same log-probs computed twice: while sampling (KV cache,
# one token at a time) and by the learner (one pass over prompt + response).
# - float32: sampling reads the frozen weights as packed fp16 with fp32 accumulation
#   (cpu_fastpath.py; logits within ~1e-4 of fp32 on the embedded model), the learner exact fp32.
# - bfloat16: 8 significant bits, a relative step of 2**-8 ~ 0.004 at every rounding; the two
#   paths round in different places (different kernels and summation orders), so the logits and
#   the log-probs derived from them differ by a few such steps: up to ~1e-3 seen on the tiny model
#   on an AVX512-BF16 CPU, bounded here by 5 steps of 2**-8 around 1.
LOGPROB_ATOL = {"float32": 2e-4, "bfloat16": 5 * 2**-8}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_generation_logprobs_match_the_learner(tiny_model_dir, temperature, dtype):
    """The 'old' log-probs recorded while sampling equal the learner's own forward pass, in both CPU
    dtypes that `model.dtype=auto` can pick (bf16 is forced here, so a CPU without native bf16 checks
    that path too, slowly)."""
    _logprobs_match(tiny_model_dir, temperature, f"model.dtype={dtype}")


def test_generation_logprobs_match_the_learner_under_the_eager_kernel(tiny_model_dir):
    """`model.attn_implementation=eager`: the sampler's own prefill masks and growing cache run
    under transformers' reference kernel as under sdpa."""
    _logprobs_match(tiny_model_dir, 1.0, "model.dtype=float32", "model.attn_implementation=eager")


def _logprobs_match(tiny_model_dir, temperature, *sets):
    import torch

    from selfredteam.game.prompts import attacker_turn, defender_turn
    from selfredteam.policy.base import SamplingParams
    from selfredteam.policy.hf import TransformersPolicy
    from selfredteam.rl.learner import Learner, Sample
    from selfredteam.rl.model import build_trainable

    cfg = cfg_for(tiny_model_dir, *sets)
    trainable = build_trainable(cfg)
    dtype = cfg.model.dtype
    assert next(trainable.model.parameters()).dtype == getattr(torch, dtype)
    assert trainable.model.config._attn_implementation == (cfg.model.attn_implementation or "sdpa")
    sampler = TransformersPolicy(trainable.model, trainable.tokenizer, "tiny", batch_size=4)
    torch.manual_seed(0)
    with trainable.sampling():
        gens = sampler.generate([defender_turn("Hi there", True), attacker_turn("a seed", True, True)],
                                SamplingParams(8, temperature, 1.0))
    samples = [Sample("defender", g.prompt_ids, g.completion_ids, 0.0) for g in gens]
    learner = Learner(trainable, cfg.train, temperature=temperature)
    recomputed = learner._score(samples, use_reference=False)
    for g, lp in zip(gens, recomputed):
        torch.testing.assert_close(torch.tensor(g.logprobs), lp.float(), atol=LOGPROB_ATOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_train_steps_and_resume_in_each_cpu_dtype(tiny_model_dir, tmp_path, dtype):
    """Both CPU dtypes train and resume exactly, whichever one `auto` picks on this machine."""
    full, part = tmp_path / "full", tmp_path / "part"
    extra = (f"model.dtype={dtype}",)
    train(cfg_for(tiny_model_dir, *extra, steps=2), full, judge=FakeJudge(), log=lambda *a: None)
    train(cfg_for(tiny_model_dir, *extra, steps=1), part, judge=FakeJudge(), log=lambda *a: None)
    train(cfg_for(tiny_model_dir, *extra, steps=2), part, resume=part, judge=FakeJudge(), log=lambda *a: None)
    a, b = read_metrics(full)[-1], read_metrics(part)[-1]
    assert a["loss/policy"] == b["loss/policy"] and a["kl/mean"] == b["kl/mean"]
    assert json.loads((full / "runtime.json").read_text())["dtype"] == dtype


class _DownJudge:
    """Test double: a judge whose endpoint fails (after its own retries) from call `fail_from` on."""

    judge_id = "down"

    def __init__(self, fail_from):
        self.calls, self.fail_from, self.inner = 0, fail_from, FakeJudge()

    def judge(self, pairs):
        from selfredteam.errors import EndpointError

        self.calls += 1
        if self.calls >= self.fail_from:
            raise EndpointError("The judge endpoint at http://127.0.0.1:9/v1 failed after 4 attempts.")
        return self.inner.judge(pairs)


def test_judge_outage_saves_a_resumable_checkpoint(tiny_model_dir, tmp_path):
    from selfredteam.errors import EndpointError

    full, broken = tmp_path / "full", tmp_path / "broken"
    train(cfg_for(tiny_model_dir, "train.save_every=100", steps=3), full, judge=FakeJudge(), log=lambda *a: None)
    with pytest.raises(EndpointError, match="Saved a checkpoint after 2 completed steps"):
        train(cfg_for(tiny_model_dir, "train.save_every=100", steps=3), broken, judge=_DownJudge(fail_from=3),
              log=lambda *a: None)
    assert (broken / "checkpoints" / "latest").read_text() == "step_2"
    train(cfg_for(tiny_model_dir, "train.save_every=100", steps=3), broken, resume=broken, judge=FakeJudge(),
          log=lambda *a: None)
    assert (full / "games" / "step_3.jsonl").read_text() == (broken / "games" / "step_3.jsonl").read_text()
    assert read_metrics(full)[-1]["loss/policy"] == read_metrics(broken)[-1]["loss/policy"]


def test_eval_accepts_a_train_run_as_model(tiny_model_dir, tmp_path):
    from selfredteam.eval.benchmarks import EvalPrompt
    from selfredteam.eval.run import run_eval
    from selfredteam.policy.base import SamplingParams
    from selfredteam.policy.spec import policy_from_spec

    run = tmp_path / "run"
    cfg = cfg_for(tiny_model_dir, steps=1)
    train(cfg, run, judge=FakeJudge(), log=lambda *a: None)
    policy = policy_from_spec(str(run), cfg)
    assert policy.name.startswith("checkpoint:")
    summary = run_eval(policy, FakeJudge(), {"b": [EvalPrompt("hello", "benign", "s", "x:1")]}, cot=True,
                       params=SamplingParams(4, 0.7, 1.0), out=tmp_path / "ev")
    assert summary["n"] == 1 and (tmp_path / "ev" / "results.jsonl").is_file()


def test_one_step_logs_role_advantages_budget_hits_sft_pull_and_the_monitor(tiny_model_dir, tmp_path):
    """Issue 19's switches together (GRPO over k answers per prompt, per-role-and-class groups,
    paired SFT rows after a warm start, SFT fading out; and #28's decision term) and the metrics
    that make them visible."""
    out = tmp_path / "run"
    cfg = cfg_for(tiny_model_dir, "train.algorithm=grpo", "train.samples_per_prompt=2",
                  "train.advantage_norm=role_class", "train.sft.paired=true", "train.sft.warmup_steps=2",
                  "train.sft.decay_steps=4", "train.sft.thought_in_loss=false", "train.sft.normalize=sequence",
                  "game.cut_off_format_reward=0", "train.sft.decision_bce=1", steps=1)
    train(cfg, out, judge=FakeJudge(), log=lambda *a: None)
    warm, step = read_metrics(out)
    assert warm["step"] == 0 and warm["warmup/sft_steps"] == 2 and warm["warmup/sft_nll_first"] > 0
    assert 0 < warm["warmup/p_refuse_harmful_last"] < 1 and 0 < warm["warmup/p_refuse_benign_last"] < 1
    assert step["sft/decision_bce"] > 0 and 0 < step["sft/p_refuse_benign"] < 1
    assert step["games"] == 8 and step["loss/sft_coef"] == 1.0
    for key in ("adv/attacker_mean", "adv/attacker_std", "adv/defender_mean", "adv/defender_std",
                "adv/defender_harmful_mean", "adv/defender_benign_mean", "len/attacker_hit_budget",
                "len/defender_hit_budget_harmful", "len/defender_hit_budget_benign", "cot/cut_off_rate",
                "loss/sft_grad_ratio", "monitor/top_answer_share", "monitor/echo_thought",
                "monitor/refusal_gap", "truncated/policy_prompts"):
        assert step[key] is not None, key
    assert step["loss/sft_grad_ratio"] > 0
    games = [json.loads(x) for x in (out / "games" / "step_1.jsonl").read_text().splitlines()]
    assert sorted(g["sample"] for g in games) == [0, 0, 0, 0, 1, 1, 1, 1]


def test_time_limit_stops_with_a_resumable_checkpoint(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    logs = []
    train(cfg_for(tiny_model_dir, "train.time_limit_min=0.0001", "train.save_every=100", steps=5), out,
          judge=FakeJudge(), log=logs.append)
    assert [r["step"] for r in read_metrics(out)] == [1]  # the first step always runs
    assert (out / "checkpoints" / "latest").read_text() == "step_1"
    assert any("train.time_limit_min=0.0001 reached: stopped after step 1 of 5" in str(x) for x in logs)
    assert any(f"The same command with --resume {out} trains the rest" in str(x) for x in logs)
    # The limit counts from each start: the same command resumed trains on (one step here) in the same run.
    last = train(cfg_for(tiny_model_dir, "train.time_limit_min=0.0001", "train.save_every=100", steps=5), out,
                 resume=out, judge=FakeJudge(), log=logs.append)
    assert [r["step"] for r in read_metrics(out)] == [1, 2] and last["run/stop_reason"] == "time_limit"
    assert (out / "checkpoints" / "latest").read_text() == "step_2"


def test_sft_only_run_saves_a_checkpoint_eval_can_load(tiny_model_dir, tmp_path):
    """train.steps=0 with SFT warm-up steps: supervised fine-tuning alone, same LoRA budget, no
    RL (the oracle row of an ablation); its checkpoint loads like any run's."""
    from selfredteam.policy.spec import policy_from_spec

    data = tmp_path / "chat.jsonl"
    data.write_text('{"prompt": "What is 2+2?", "response": "It is four.", "label": "benign"}\n'
                    '{"prompt": "Harm someone.", "response": "Sorry, I will not help.", "label": "harmful"}\n')
    out = tmp_path / "run"
    cfg = cfg_for(tiny_model_dir, f"train.sft.data={data}", "train.sft.warmup_steps=3", steps=0)
    last = train(cfg, out, judge=FakeJudge(), log=lambda *a: None)
    assert last["warmup/sft_steps"] == 3 and last["run/stop_reason"] == "done"
    assert find_checkpoint(out).name == "step_0"
    assert read_metrics(out)[0]["step"] == 0
    assert policy_from_spec(str(out), cfg).name.startswith("checkpoint:")


def _chat_rows(tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text('{"prompt": "What is 2+2?", "response": "It is four.", "label": "benign"}\n'
                    '{"prompt": "Harm someone.", "response": "Sorry, I will not help.", "label": "harmful"}\n')
    return data


def _adapter(out, step):
    from safetensors.torch import load_file

    return load_file(str(out / "checkpoints" / f"step_{step}" / "adapter" / "adapter_model.safetensors"))


def test_ctrl_c_in_the_sft_warm_up_saves_it_and_resume_finishes_it_the_same(tiny_model_dir, tmp_path, monkeypatch):
    """A warm-up of many minutes (the oracle's three passes: ~24 min) is work a Ctrl-C must not lose: the run stops with a
    checkpoint at the warm-up step it reached, and --resume does only the steps left, ending on the
    same weights as an uninterrupted warm-up."""
    import os
    import signal

    from selfredteam.rl.learner import Learner

    data = _chat_rows(tmp_path)
    cfg = cfg_for(tiny_model_dir, f"train.sft.data={data}", "train.sft.warmup_steps=4", steps=0)
    full, part = tmp_path / "full", tmp_path / "part"
    train(cfg, full, judge=FakeJudge(), log=lambda *a: None)
    sft_step, calls = Learner.sft_step, []

    def interrupted(self, rows, **kw):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C during the second step
        return sft_step(self, rows, **kw)

    monkeypatch.setattr(Learner, "sft_step", interrupted)
    stopped = train(cfg, part, judge=FakeJudge(), log=lambda *a: None)
    assert stopped["run/stop_reason"] == "signal" and len(calls) == 2
    state = json.loads((part / "checkpoints" / "step_0" / "state.json").read_text())
    assert state["sft_warmup_done"] == 2
    last = train(cfg, part, resume=part, judge=FakeJudge(), log=lambda *a: None)
    assert len(calls) == 4 and last["warmup/sft_steps"] == 4 and last["run/stop_reason"] == "done"
    a, b = _adapter(full, 0), _adapter(part, 0)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def _record_rates(monkeypatch) -> tuple[list[float], list[float]]:
    """Lists that fill as a run trains: each SFT warm-up step's lr_scale, and the rate of each RL
    update (the optimizer's one parameter group)."""
    from selfredteam.rl.learner import Learner

    sft_step, update, scales, rates = Learner.sft_step, Learner.update, [], []

    def recorded(self, rows, lr_scale=1.0):
        scales.append(lr_scale)
        return sft_step(self, rows, lr_scale=lr_scale)

    def rl_update(self, *a, **kw):
        rates.append(self.optimizer.param_groups[0]["lr"])
        return update(self, *a, **kw)

    monkeypatch.setattr(Learner, "sft_step", recorded)
    monkeypatch.setattr(Learner, "update", rl_update)
    return scales, rates


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_a_decaying_warm_up_schedule_lowers_the_rate_step_by_step_and_resumes_where_it_stopped(
        schedule, tiny_model_dir, tmp_path, monkeypatch):
    """train.sft.warmup_schedule: each warm-up step's rate follows the schedule from where the run
    is (a resume carries on down the same curve), and the RL steps after it get train.lr back."""
    from selfredteam.rl.learner import lr_decay_scale

    scales, rates = _record_rates(monkeypatch)
    data = _chat_rows(tmp_path)
    cfg = cfg_for(tiny_model_dir, f"train.sft.data={data}", "train.sft.warmup_steps=4",
                  f"train.sft.warmup_schedule={schedule}", "train.lr=0.01", steps=1)
    train(cfg, tmp_path / "run", judge=FakeJudge(), log=lambda *a: None)
    assert scales == [lr_decay_scale(schedule, i, 4) for i in range(4)]
    assert scales[0] == 1.0 and all(a > b for a, b in zip(scales, scales[1:])) and scales[-1] < 0.26
    assert rates == [0.01]


def test_resume_after_the_warm_up_does_not_repeat_it(tiny_model_dir, tmp_path):
    data = _chat_rows(tmp_path)
    out = tmp_path / "run"
    train(cfg_for(tiny_model_dir, f"train.sft.data={data}", "train.sft.warmup_steps=2", steps=1), out,
          judge=FakeJudge(), log=lambda *a: None)
    assert json.loads((out / "checkpoints" / "step_0" / "state.json").read_text())["sft_warmup_done"] == 2
    train(cfg_for(tiny_model_dir, f"train.sft.data={data}", "train.sft.warmup_steps=2", steps=2), out, resume=out,
          judge=FakeJudge(), log=lambda *a: None)
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2]  # one warm-up row, then the two self-play steps


def test_the_warm_up_runs_at_its_own_peak_rate_and_a_resume_after_it_at_the_new_train_lr(
        tiny_model_dir, tmp_path, monkeypatch):
    """train.sft.lr: the warm-up's steps scale to it, the RL steps keep train.lr; and a run resumed
    after its warm-up with another --set train.lr runs its RL steps at that rate (the saved
    optimizer state would otherwise keep the old one)."""
    scales, rates = _record_rates(monkeypatch)
    data, out = _chat_rows(tmp_path), tmp_path / "run"
    warm = (f"train.sft.data={data}", "train.sft.warmup_steps=2", "train.sft.warmup_schedule=constant",
            "train.sft.lr=0.02")
    train(cfg_for(tiny_model_dir, *warm, "train.lr=0.01", steps=1), out, judge=FakeJudge(), log=lambda *a: None)
    assert scales == [2.0, 2.0] and rates == [0.01]
    train(cfg_for(tiny_model_dir, *warm, "train.lr=0.001", steps=2), out, resume=out / "checkpoints" / "step_0",
          judge=FakeJudge(), log=lambda *a: None)
    assert scales == [2.0, 2.0] and rates == [0.01, 0.001, 0.001]  # no second warm-up; the new rate
    assert [r["lr"] for r in read_metrics(out) if r["step"]] == [0.001, 0.001]  # logged: the rate each step ran at


def test_the_learner_gets_the_trunk_states_captured_while_sampling(tiny_model_dir, tmp_path, monkeypatch):
    """With LoRA on the top layers only, every game turn hands the learner its frozen-trunk states,
    so the reference pass runs the top layers alone. A field once inserted into `Sample` shifted
    them into `weights` by position and every step silently paid a full reference pass."""
    from selfredteam.rl.learner import Learner

    seen = []
    original = Learner._captured_trunk

    def spy(self, samples):
        seen.append([(s.trunk is not None and s.trunk.shape[0] == len(s.prompt_ids) + len(s.response_ids),
                      s.weights) for s in samples])
        return original(self, samples)

    monkeypatch.setattr(Learner, "_captured_trunk", spy)
    train(cfg_for(tiny_model_dir, "train.lora_layers=1", steps=1), tmp_path / "run", judge=FakeJudge(),
          log=lambda *a: None)
    assert seen and seen[0], "no RL update ran"
    assert all(ok and weights is None for ok, weights in seen[0])


def test_a_gradient_that_stays_nan_stops_the_warm_up_with_finite_weights_saved(tiny_model_dir, tmp_path, monkeypatch):
    """A NaN gradient (a CUDA bf16 warm-up's at step ~300) is skipped rather than applied, and the
    warm-up goes on; when it stays NaN, the run stops with a clear error and a checkpoint of the
    last finite weights, resumable."""
    from selfredteam.errors import TrainingDiverged
    from selfredteam.rl.learner import Learner

    data = _chat_rows(tmp_path)
    cfg = cfg_for(tiny_model_dir, f"train.sft.data={data}", "train.sft.warmup_steps=6", steps=0)
    backward, calls = Learner.sft_backward, []

    def poisoned(self, sft, coef):
        calls.append(1)
        nll = backward(self, sft, coef)
        if len(calls) == 2 or len(calls) >= 4:  # one bad step, then bad for good
            self.policy.trainable_parameters()[0].grad.fill_(float("nan"))
        return nll

    monkeypatch.setattr(Learner, "sft_backward", poisoned)
    monkeypatch.setattr("selfredteam.rl.learner.NONFINITE_LIMIT", 3)
    out, logs = tmp_path / "run", []
    with pytest.raises(TrainingDiverged, match="3 optimizer steps in a row .* the last one in 1 of .* --resume"):
        train(cfg, out, judge=FakeJudge(), log=logs.append)
    state = json.loads((out / "checkpoints" / "step_0" / "state.json").read_text())
    assert len(calls) == 6 and state["sft_warmup_done"] == 5  # the 6th step raised before it counted
    assert all(torch.isfinite(t).all() for t in _adapter(out, 0).values())


def test_an_rl_step_that_skipped_its_update_says_where(tiny_model_dir, tmp_path, monkeypatch):
    from selfredteam.rl.learner import Learner

    backward = Learner._backward

    def poisoned(self, loss):
        backward(self, loss)
        self.policy.trainable_parameters()[0].grad.fill_(float("nan"))

    monkeypatch.setattr(Learner, "_backward", poisoned)
    logs = []
    last = train(cfg_for(tiny_model_dir, steps=1), tmp_path / "run", judge=FakeJudge(), log=logs.append)
    n = last["loss/skipped_steps"]
    assert n >= 1  # every optimizer step of the update (its train batches)
    assert any(f"step 1: {n:.0f} optimizer step(s) skipped, the gradient not finite in 1 of " in line for line in logs)


def test_a_warm_up_that_skipped_steps_says_where_and_whether_the_loss_was_finite(tiny_model_dir, tmp_path,
                                                                                 monkeypatch):
    """A finite loss with a NaN gradient points at the backward pass, not at the rows: the warm-up
    counts such skips and names the tensors of the last one (the CUDA bf16 NaN was not isolated)."""
    from selfredteam.rl.learner import Learner

    cfg = cfg_for(tiny_model_dir, f"train.sft.data={_chat_rows(tmp_path)}", "train.sft.warmup_steps=3", steps=0)
    backward, calls = Learner.sft_backward, []

    def poisoned(self, sft, coef):
        calls.append(1)
        nll = backward(self, sft, coef)
        if len(calls) == 2:
            self.policy.trainable_parameters()[0].grad.fill_(float("nan"))
        return nll

    monkeypatch.setattr(Learner, "sft_backward", poisoned)
    logs = []
    last = train(cfg, tmp_path / "run", judge=FakeJudge(), log=logs.append)
    assert last["warmup/skipped_steps"] == 1 and last["warmup/skipped_finite_loss"] == 1
    said = next(line for line in logs if "skipped" in line)
    assert "(1 of them with a finite loss); the last one's in 1 of " in said and "lora_A" in said


def test_time_limit_stop_follows_the_loops_own_rule():
    from selfredteam.rl.loop import time_limit_stop

    # Zen 1 (BENCHMARKS): ~150 s a step against cpu-demo's 18 minutes; that run stopped after step 7 of 20.
    assert time_limit_stop(18, elapsed_s=300, step_s=150, done=2, total=20) == 7
    assert time_limit_stop(18, elapsed_s=72, step_s=36, done=2, total=20) is None  # the faster AVX2 VM: all fit
    assert time_limit_stop(0, elapsed_s=1e6, step_s=1e3, done=2, total=20) is None  # 0: no limit
    assert time_limit_stop(1, elapsed_s=59, step_s=2, done=2, total=20) == 2  # the next step would end past it


def test_a_run_the_time_limit_will_cut_short_says_so_after_its_second_step(tiny_model_dir, tmp_path, monkeypatch):
    """The note comes once, after step 2, and names the step the run then really stops after.
    The loop's clock is replaced by one that moves 100 s at each reading, so the limit bites."""
    from selfredteam.rl import loop

    class Clock:
        now = 0.0

        def perf_counter(self):
            self.now += 100.0
            return self.now

    monkeypatch.setattr(loop, "time", Clock())
    out, logs = tmp_path / "run", []
    last = train(cfg_for(tiny_model_dir, "train.time_limit_min=3", "train.sft.warmup_steps=0", steps=4), out,
                 judge=FakeJudge(), log=logs.append)
    notes = [str(x) for x in logs if "will stop the run after about" in str(x)]
    assert len(notes) == 1, logs
    assert "after about step 2 of 4" in notes[0] and f"--resume {out}" in notes[0]
    assert "--set train.time_limit_min=" in notes[0]
    assert last["run/stop_reason"] == "time_limit" and [r["step"] for r in read_metrics(out)] == [1, 2]
