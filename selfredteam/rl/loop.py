"""`selfredteam train`: online self-play RL. Read top to bottom; each phase is one timed call.

    for step:
        seeds   <- sample a balanced batch from the pool
        games   <- play with the *current* policy (attacker revises, defender answers, judge labels)
        samples <- the trainable turns of those games, with their rewards
        stats   <- learner.update(samples)            (REINFORCE++ by default)
        log metrics + a sample of games; checkpoint every N steps and on Ctrl-C / SIGTERM
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from selfredteam.checkpoint import (
    find_checkpoint,
    load_training_state,
    load_variants,
    load_weights,
    read_state,
    save_checkpoint,
)
from selfredteam.config import Config, save_config, to_dict
from selfredteam.data import Seed, load_pool, missing_class, sample_batch
from selfredteam.errors import DataError, EndpointError, UserError
from selfredteam.eval.monitor import CollapseMonitor, step_signals
from selfredteam.fsutil import write_text_atomic
from selfredteam.game.play import GameRecord, play_games, sampling_params
from selfredteam.game.prompts import instruction_texts
from selfredteam.judges.base import Judge
from selfredteam.policy.base import (
    Generation,
    MeteredPolicy,
    Policy,
    SamplingParams,
)
from selfredteam.policy.runtime import describe, runtime_info, save_runtime
from selfredteam.rl.distributed import make_accelerator, sampling_params_gathered
from selfredteam.rl.learner import Learner, Sample
from selfredteam.rl.metrics import game_metrics
from selfredteam.rl.model import TrainablePolicy, build_trainable
from selfredteam.rl.sft import HELPFUL_THOUGHT, NEUTRAL_THOUGHT, SftTerm, load_sft_rows
from selfredteam.rl.tracking import MultiTracker, build_trackers
from selfredteam.rl.variants import Variants

TRAINED_ROLES = {"selfplay": ("attacker", "defender"), "attacker-only": ("attacker",), "defender-only": ("defender",)}


class RoleView:
    """The current policy as a sampler for one role (TrainablePolicy.sampling sets it up)."""

    def __init__(self, trainable: TrainablePolicy, sampler: Any, role: str, reference: bool = False,
                 capture_trunk: bool = False) -> None:
        self.trainable, self.sampler, self.role, self.reference = trainable, sampler, role, reference
        self.name = f"{sampler.name}:{role}{':reference' if reference else ''}"
        self.trunk_layer = trainable.trunk_layer() if capture_trunk and not reference else None
        """Keep the frozen trunk's states of each turn: the learner then runs only the top layers."""

    def generate(self, turns: list, params: SamplingParams) -> list[Generation]:
        if self.reference:
            with self.trainable.reference():
                return self.sampler.generate(turns, params)
        with self.trainable.sampling(self.role), self.sampler.capturing(self.trunk_layer):
            return self.sampler.generate(turns, params)


class StopFlag:
    """First Ctrl-C / SIGTERM: finish the step, checkpoint, exit. Second Ctrl-C: stop now."""

    def __init__(self) -> None:
        self.requested = False

    @contextmanager
    def installed(self, log) -> Iterator[StopFlag]:
        def handler(signum, frame):
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.requested = True
            log(f"[yellow]{signal.Signals(signum).name}: saving a checkpoint after this step "
                "(Ctrl-C again to stop at once).[/]")

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def samples_from_games(games: list[GameRecord], roles: tuple[str, ...]) -> list[Sample]:
    """Trainable turns: each role's prompt/response ids and reward; parse errors are skipped.

    Groups compare like with like: a defender turn is grouped with the defender's other answers to
    the same prompt; an attacker turn (shared by the k games of its seed) appears once, with the
    mean of its games' rewards (the defender's answers are the attacker's environment)."""
    out = []
    attacker_games: dict[int, list[GameRecord]] = {}
    for g in games:
        past = g.extra.get("opponent")  # the role a past snapshot played: nothing to learn from it
        if "attacker" in roles and g.attacker is not None and past != "attacker":
            attacker_games.setdefault(id(g.attacker), []).append(g)
        if "defender" in roles and past != "defender":
            out += _sample("defender", g.defender, g.rewards["defender"], 2 * g.prompt_index + 1, g.seed_label)
    for gs in attacker_games.values():
        rewards = [g.rewards["attacker"] for g in gs if g.rewards["attacker"] is not None]
        if rewards:  # plus the novelty bonus when it is on (logged apart from the game reward)
            reward = sum(rewards) / len(rewards) + gs[0].extra.get("novelty_bonus", 0.0)
            out += _sample("attacker", gs[0].attacker, reward, 2 * gs[0].prompt_index, gs[0].seed_label)
    return out


def _sample(role: str, turn: Any, reward: float | None, group: int, prompt_class: str) -> list[Sample]:
    if turn is None or reward is None or turn.generation is None or not turn.generation.completion_ids:
        return []
    gen = turn.generation
    return [Sample(role, gen.prompt_ids, gen.completion_ids, reward, group, prompt_class, gen.logprobs,
                   gen.trunk_states)]


def _check_resume(cfg: Config, resume: Path | None, log) -> Path | None:
    """Validate a resume dir before anything is written (a wrong one must touch nothing)."""
    if resume is None:
        return None
    ckpt = find_checkpoint(resume, log)
    state = read_state(ckpt)
    saved = state.get("config", {})
    for key in ("name_or_path",):
        if saved.get("model", {}).get(key) != getattr(cfg.model, key):
            raise UserError(
                f"Checkpoint {ckpt} was trained from model {saved.get('model', {}).get(key)!r}, but this run "
                f"uses {getattr(cfg.model, key)!r}. Resume with the same --set model.name_or_path, or start a new run."
            )
    for key in ("full_finetune", "parameter_sharing", "lora_rank", "lora_layers"):
        if saved.get("train", {}).get(key) != getattr(cfg.train, key):
            raise UserError(f"Checkpoint {ckpt} has train.{key}={saved.get('train', {}).get(key)!r}, this run has "
                            f"{getattr(cfg.train, key)!r}: the weights cannot be loaded into this model.")
    return ckpt


def train(cfg: Config, out: Path, resume: Path | None = None, judge: Judge | None = None,
          wandb_project: str | None = None, log=print, progress: Any = None) -> dict[str, Any]:
    """Run online self-play RL; returns the last step's metrics and `run/stop_reason` (`done`,
    `time_limit`, or `signal`: Ctrl-C / SIGTERM stopped it early, resumable)."""
    from selfredteam.judges import build_judge
    from selfredteam.policy.hf import TransformersPolicy

    t, g = cfg.train, cfg.generation
    ckpt = _check_resume(cfg, resume, log)
    pool = load_pool(cfg.data)
    if t.role_mode == "defender-only" and t.static_prompts:
        pool += load_pool(cfg.data, t.static_prompts)
    if problem := missing_class(pool, cfg.game.harmful_fraction, cfg.data.seeds):
        raise DataError(problem)
    sft_rows = load_sft_rows(t.sft_data) if t.sft_data and (t.sft_coef > 0 or t.sft_warmup_steps) else None
    accelerator = make_accelerator()
    info = runtime_info(cfg.model, cfg.run.threads)
    if accelerator:
        info |= {"processes": accelerator.num_processes, "distributed": str(accelerator.distributed_type).split(".")[-1]}
    log(f"Running on {describe(info)}" + (f", {info['processes']} processes ({info['distributed']})" if accelerator else "") + ".")
    judge = judge or build_judge(cfg.judge)
    rank = accelerator.process_index if accelerator else 0
    is_main = rank == 0
    trainable = build_trainable(cfg, device=accelerator.device if accelerator else None)
    if ckpt:  # weights before the learner: FSDP shards the model when it prepares it
        load_weights(ckpt, trainable)
    learner = Learner(trainable, t, accelerator, temperature=g.temperature)
    sampler = TransformersPolicy(trainable.model, trainable.tokenizer, cfg.model.name_or_path, g.batch_size,
                                 g.max_prompt_length)
    rollout = _vllm_rollouts(cfg, sampler)
    attacker, defender = _players(cfg, trainable, sampler, accelerator, rollout)
    sft = SftTerm(sft_rows, sampler, cfg.game.cot, t, g.defender_max_new_tokens) if sft_rows else None
    # Each data-parallel process plays its own games: its own seed stream.
    rng = random.Random(cfg.run.seed + 1_000_003 * rank)
    start = 0
    variants = Variants(t)
    if ckpt:
        start = load_training_state(ckpt, learner, rng)["step"]
        variants.load_state_dict(load_variants(ckpt))
        if rank:  # checkpoints hold rank 0's RNG; other ranks start a fresh stream per step
            rng = random.Random(cfg.run.seed + 1_000_003 * rank + start)
        log(f"Resumed from {ckpt} at step {start}.")
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
        save_runtime(out, info)
        if ckpt:
            _truncate_metrics(out / "metrics.jsonl", start)
    tracker = build_trackers(out, wandb_project, to_dict(cfg)) if is_main else MultiTracker([])
    if rollout and start:  # the server samples with the resumed adapter
        _sync_adapter(rollout, trainable, out, start, is_main, learner)
    if sft and start == 0 and t.sft_warmup_steps:
        warm = _sft_warmup(learner, sft, t.sft_warmup_steps, rng, log)
        tracker.log(0, warm)
        if t.steps == 0:  # supervised only (the oracle row of an ablation): keep what it learned
            save_checkpoint(out, 0, trainable, learner, rng, {"config": to_dict(cfg)}, is_main, variants.state_dict())
            tracker.close()
            return warm | {"run/stop_reason": "done"}
    # defender-only: no attacker turn (vanilla seeds, plus static_prompts mixed into the pool).
    no_revision = dataclasses.replace(cfg.game, revise_fraction=0.0)
    rules = no_revision if t.role_mode == "defender-only" else cfg.game
    roles = TRAINED_ROLES[t.role_mode]
    attacker_params, defender_params = sampling_params(g, "attacker", cfg.game.cot), sampling_params(g, "defender", cfg.game.cot)
    monitor = CollapseMonitor()
    instructions = instruction_texts()
    thoughts = [NEUTRAL_THOUGHT, HELPFUL_THOUGHT] + sorted({r.thought for r in sft_rows or [] if r.thought})
    last: dict[str, Any] = {}
    stop_reason = "done"
    stop = StopFlag()
    started = time.perf_counter()
    with stop.installed(log):
        for step in range(start, t.steps):
            t0 = time.perf_counter()
            if step > start and _out_of_time(t.time_limit_min, started, last.get("timing/step_s", 0.0), accelerator, learner):
                save_checkpoint(out, step, trainable, learner, rng, {"config": to_dict(cfg)}, is_main,
                                variants.state_dict())
                log(f"Time limit train.time_limit_min={t.time_limit_min} reached: stopped after step {step} of "
                    f"{t.steps} (checkpoint saved; --resume {out} with a larger limit continues).")
                stop_reason = "time_limit"
                break
            rng_before, torch_rng_before = rng.getstate(), torch.get_rng_state()
            # 1. seeds: a balanced batch (less the games that replay lost prompts, if replay is on).
            seeds: list[Seed] = sample_batch(pool, variants.fresh_seeds(t.rollout_batch_size), cfg.game.harmful_fraction, rng)
            # 2. play with the current policy (generation + judge); each final prompt answered
            #    samples_per_prompt times (the defender's GRPO/RLOO groups). With the variants on,
            #    some games meet a past self and some replay prompts the defender lost.
            gen_s0 = attacker.seconds + (defender.seconds if defender else 0.0)
            cut_before = (sampler.truncation.count, _judge_cuts(judge))

            def play(group: list[Seed], att: Policy, dfd: Policy | None, replay: bool) -> list[GameRecord]:
                return play_games(group, att, judge, rules=no_revision if replay else rules, rng=rng, defender=dfd,
                                  attacker_params=attacker_params, defender_params=defender_params,
                                  samples_per_prompt=t.samples_per_prompt)

            down: EndpointError | None = None
            try:
                with sampling_params_gathered(trainable.model, learner.engine) if learner.lockstep \
                        else contextlib.nullcontext():
                    games = variants.play(play, seeds, attacker, defender, trainable, rng) if variants.active \
                        else play(seeds, attacker, defender, False)
            except EndpointError as e:
                down = e
            if learner._max(int(down is not None)):  # all processes stop together
                # The judge (or a remote policy) stayed down after its retries. Nothing of this
                # step was learned: save the completed steps with the RNG as it was before the
                # step, so --resume replays exactly this step.
                rng.setstate(rng_before)
                torch.set_rng_state(torch_rng_before)
                save_checkpoint(out, step, trainable, learner, rng, {"config": to_dict(cfg)}, is_main,
                                variants.state_dict())
                tracker.close()
                why = down or "An endpoint failed on another process."
                raise EndpointError(f"{why} Saved a checkpoint after {step} completed steps; fix the "
                                    f"endpoint and continue with --resume {out}.") from None
            t_play = time.perf_counter() - t0
            cut = {"truncated/policy_prompts": sampler.truncation.count - cut_before[0],
                   "truncated/judge_inputs": _judge_cuts(judge) - cut_before[1]}
            t_gen = attacker.seconds + (defender.seconds if defender else 0.0) - gen_s0
            variant_metrics = variants.after_play(games)
            # 3. learn from the trainable turns (plus the auxiliary SFT term, on its schedule).
            t1 = time.perf_counter()
            samples = samples_from_games(games, roles)
            sft_coef = sft.coef(step) if sft else 0.0
            stats = learner.update(samples, sft.draw(rng) if sft_coef > 0 else None, sft_coef)
            variants.after_update(step + 1, trainable)
            if rollout:  # the server samples the next step with this step's adapter
                try:
                    _sync_adapter(rollout, trainable, out, step + 1, is_main, learner)
                except EndpointError as e:
                    save_checkpoint(out, step + 1, trainable, learner, rng, {"config": to_dict(cfg)}, is_main,
                                    variants.state_dict())
                    tracker.close()
                    raise EndpointError(f"{e} Saved a checkpoint after {step + 1} steps; continue with --resume {out}.") from None
            t_learn = time.perf_counter() - t1
            # 4. log: game metrics, learner stats, the collapse monitor, where the time went.
            signals = step_signals(games, instructions, thoughts)
            for warning in monitor.update(step + 1, signals):
                log(f"[yellow]warning:[/] {warning}")
            tokens = sum(len(s.response_ids) for s in samples)
            metrics = game_metrics(games) | stats | signals | cut | variant_metrics | {
                "timing/generate_s": t_gen, "timing/judge_s": t_play - t_gen, "timing/learn_s": t_learn,
                "timing/step_s": time.perf_counter() - t0,
                "perf/tokens_per_s": tokens / t_gen if t_gen else 0.0,
            }
            tracker.log(step + 1, metrics)
            if is_main and t.games_log_every and (step + 1) % t.games_log_every == 0:
                _write_games(out / "games" / f"step_{step + 1}.jsonl", games)
            last = metrics
            if progress and is_main:
                progress(step + 1, t.steps, metrics)
            stop_now = stop.requested if not accelerator else bool(learner._max(int(stop.requested)))
            if (step + 1) % t.save_every == 0 or step + 1 == t.steps or stop_now:
                save_checkpoint(out, step + 1, trainable, learner, rng, {"config": to_dict(cfg)}, is_main,
                                variants.state_dict())
            stop.requested = stop_now
            if stop.requested:
                log(f"Stopped at step {step + 1}; resume with --resume {out}.")
                stop_reason = "signal" if step + 1 < t.steps else "done"
                break
    tracker.close()
    return last | {"run/stop_reason": stop_reason}


def _out_of_time(limit_min: float, started: float, step_s: float, accelerator: Any, learner: Learner) -> bool:
    """Would one more step (as long as the last) end past the limit? (All processes agree.)"""
    if not limit_min:
        return False
    over = time.perf_counter() - started + step_s > 60 * limit_min
    return bool(learner._max(int(over))) if accelerator else over


def _vllm_rollouts(cfg: Config, sampler: Any) -> Any | None:
    """train.rollout_engine=vllm: the server that samples (our sampler makes its prompt ids)."""
    t = cfg.train
    if t.rollout_engine != "vllm":
        return None
    from selfredteam.http import OpenAIClient
    from selfredteam.policy.vllm_served import VLLMServedPolicy

    client = OpenAIClient(t.vllm_base_url or "", cfg.model.api_key_env, cfg.model.timeout_s, cfg.model.max_retries,
                          cfg.model.max_concurrency, what="vLLM rollout server")
    return VLLMServedPolicy(client, sampler, t.vllm_model or cfg.model.name_or_path, t.vllm_sync_timeout_s)


def _sync_adapter(rollout: Any, trainable: TrainablePolicy, out: Path, step: int, is_main: bool, learner: Learner) -> None:
    """Save this step's LoRA adapter and have the vLLM server load it (adapter-only sync); the
    other processes wait for the load (a collective is the barrier). Sharded adapters (FSDP,
    ZeRO-3) are gathered first, by every process."""
    name = f"selfredteam-step{step}"
    weights = trainable.weights_for_save()
    if is_main:
        adapter_dir = out / "rollout_adapters" / f"step_{step}"
        trainable.save_pretrained(adapter_dir, weights)
        previous = rollout.adapter
        rollout.sync(adapter_dir, name)
        if previous:
            import shutil

            shutil.rmtree(out / "rollout_adapters" / previous.replace("selfredteam-step", "step_"), ignore_errors=True)
    else:
        rollout.adapter = name
    learner._max(0)


def _players(cfg: Config, trainable: TrainablePolicy, sampler: Any, accelerator: Any,
             rollout: Any | None = None) -> tuple[MeteredPolicy, MeteredPolicy | None]:
    """The attacker and (when it is another policy) the defender, as metered samplers."""
    if rollout is not None:  # vLLM samples both roles (shared weights), the base model for a frozen defender
        frozen = cfg.train.role_mode == "attacker-only"
        other = (_frozen_defender(cfg, trainable, sampler) if cfg.train.defender_model else rollout.reference_view()) \
            if frozen else None
        return MeteredPolicy(rollout), (MeteredPolicy(other) if other is not None else None)
    # The learner reuses the trunk states captured while sampling (single process: under DDP it
    # runs every layer).
    capture = trainable.frozen_layers > 0 and accelerator is None
    attacker: Policy = RoleView(trainable, sampler, "attacker", capture_trunk=capture)
    defender: Policy = attacker if trainable.sharing == "shared" else RoleView(
        trainable, sampler, "defender", capture_trunk=capture)
    if cfg.train.role_mode == "attacker-only":
        defender = _frozen_defender(cfg, trainable, sampler)
    return MeteredPolicy(attacker), (MeteredPolicy(defender) if defender is not attacker else None)


def _sft_warmup(learner: Learner, sft: SftTerm, steps: int, rng: random.Random, log) -> dict[str, Any]:
    """train.sft_warmup_steps optimizer steps on the SFT rows alone, before the first RL step."""
    t0 = time.perf_counter()
    nll = [learner.sft_step(sft.draw(rng)) for _ in range(steps)]
    log(f"SFT warm start: {steps} steps, NLL {nll[0]:.3f} -> {nll[-1]:.3f} ({time.perf_counter() - t0:.0f} s).")
    return {"warmup/sft_steps": steps, "warmup/sft_nll_first": nll[0], "warmup/sft_nll_last": nll[-1],
            "timing/warmup_s": time.perf_counter() - t0}


def _judge_cuts(judge: Judge) -> int:
    """Judge inputs cut to the budget so far (0 for judges not built by build_judge)."""
    counter = getattr(judge, "truncation", None)
    return counter.count if counter is not None else 0


def _frozen_defender(cfg: Config, trainable: TrainablePolicy, sampler: Any) -> Policy:
    """attacker-only: the defender is another model (an HF id/dir, a `train` run, an endpoint),
    or the reference (adapters disabled)."""
    if cfg.train.defender_model:
        from selfredteam.policy.spec import policy_from_spec

        return policy_from_spec(cfg.train.defender_model, cfg)
    if not trainable.is_lora:
        raise UserError("attacker-only with full fine-tuning needs train.defender_model (a frozen defender).")
    return RoleView(trainable, sampler, "defender", reference=True)


def _truncate_metrics(path: Path, step: int) -> None:
    """After a resume, drop metric rows of steps that ran after the checkpoint (they are redone).
    A row a kill -9 cut short is one of those (a step's row is whole before its checkpoint is
    written), so a line that does not parse is dropped with them."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    write_text_atomic(path, "".join(line + "\n" for line in keep))


def _write_games(path: Path, games: list[GameRecord]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for g in games:
            f.write(json.dumps(g.to_dict(), ensure_ascii=False) + "\n")
