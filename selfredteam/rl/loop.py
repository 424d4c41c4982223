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
import math
import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selfredteam.checkpoint import (
    find_checkpoint,
    load_extensions,
    load_training_state,
    read_state,
    save_checkpoint,
)
from selfredteam.config import Config, save_config, to_dict
from selfredteam.data import Seed, load_pool, missing_class, sample_batch
from selfredteam.errors import DataError, EndpointError, TrainingDiverged, UserError
from selfredteam.eval.monitor import CollapseMonitor, step_signals
from selfredteam.fsutil import write_jsonl, write_text_atomic
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
from selfredteam.rl.extensions import Extensions
from selfredteam.rl.learner import Learner, Sample, lr_decay_scale
from selfredteam.rl.metrics import game_metrics
from selfredteam.rl.model import TrainablePolicy, build_trainable
from selfredteam.rl.sft import HELPFUL_THOUGHT, NEUTRAL_THOUGHT, SftTerm, load_sft_rows
from selfredteam.rl.timing import Timings
from selfredteam.rl.tracking import MultiTracker, build_trackers

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
        past = g.opponent  # the role a past snapshot played: nothing to learn from it
        if "attacker" in roles and g.attacker is not None and past != "attacker":
            attacker_games.setdefault(id(g.attacker), []).append(g)
        if "defender" in roles and past != "defender":
            out += _sample("defender", g.defender, g.rewards["defender"], 2 * g.prompt_index + 1, g.seed_label)
    for gs in attacker_games.values():
        rewards = [g.rewards["attacker"] for g in gs if g.rewards["attacker"] is not None]
        if rewards:  # plus the novelty bonus when it is on (logged apart from the game reward)
            reward = sum(rewards) / len(rewards) + (gs[0].novelty_bonus or 0.0)
            out += _sample("attacker", gs[0].attacker, reward, 2 * gs[0].prompt_index, gs[0].seed_label)
    return out


def _sample(role: str, turn: Any, reward: float | None, group: int, prompt_class: str) -> list[Sample]:
    if turn is None or reward is None or turn.generation is None or not turn.generation.completion_ids:
        return []
    gen = turn.generation
    return [Sample(role, gen.prompt_ids, gen.completion_ids, reward, group=group, prompt_class=prompt_class,
                   old_logprobs=gen.logprobs, trunk=gen.trunk_states)]


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


@dataclass
class Run:
    """What a training run holds from one step to the next (`build_run` makes it once)."""

    cfg: Config
    out: Path
    log: Any
    judge: Judge
    is_main: bool
    trainable: TrainablePolicy
    learner: Learner
    sampler: Any
    """The local sampler (the trainable model's weights); its prompt-budget counter is logged."""
    rollout: Any | None
    """The vLLM server that samples instead (train.rollout_engine=vllm), or None."""
    attacker: MeteredPolicy
    defender: MeteredPolicy | None
    """None when the attacker's sampler also answers (shared weights)."""
    sft: SftTerm | None
    rng: random.Random
    start: int
    warmed: int
    """SFT warm-up steps done (train.sft.warmup_steps; saved in every checkpoint, so a resume
    neither repeats nor skips them)."""
    extensions: Extensions
    tracker: Any
    pool: list[Seed]
    thoughts: list[str]
    """Stock thoughts (the SFT rows' and ours): the monitor flags answers that only repeat one."""
    monitor: CollapseMonitor = field(default_factory=CollapseMonitor)
    done: int = 0
    """RL steps completed (from `start`): what a checkpoint saved on a stop holds."""

    def save(self, step: int) -> None:
        """A resumable checkpoint after `step` completed steps: weights, optimizer, RNG, extensions."""
        save_checkpoint(self.out, step, self.trainable, self.learner, self.rng,
                        {"config": to_dict(self.cfg), "sft_warmup_done": self.warmed},
                        self.is_main, self.extensions.state_dict())

    def close(self, together: bool = True) -> None:
        """Close the trackers; in a launched run that every process reaches (`together`), wait for
        the others, then leave the process group. A process that exits with gloo's threads still
        running can abort ("terminate called without an active exception"), failing a run that had
        finished and saved."""
        self.tracker.close()
        if together and self.learner.acc is not None:
            self.learner.acc.wait_for_everyone()
            self.learner.acc.end_training()

    def any_process(self, flag: bool) -> bool:
        """`flag` on any process (itself in one process): all processes stop at the same step."""
        return bool(self.learner.max_over_processes(int(flag)))

    def generated_seconds(self) -> float:
        return self.attacker.seconds + (self.defender.seconds if self.defender else 0.0)


def train(cfg: Config, out: Path, resume: Path | None = None, judge: Judge | None = None,
          wandb_project: str | None = None, log=print, progress: Any = None) -> dict[str, Any]:
    """Run online self-play RL; returns the last step's metrics and `run/stop_reason` (`done`,
    `time_limit`, or `signal`: Ctrl-C / SIGTERM stopped it early, resumable)."""
    t = cfg.train
    run = build_run(cfg, out, resume, judge, wandb_project, log)
    run.done = run.start
    last: dict[str, Any] = {}
    stop_reason = "done"
    stop = StopFlag()
    with stop.installed(log), _stops_with_a_checkpoint(run):
        if run.sft and run.start == 0 and run.warmed < t.sft.warmup_steps:
            warm = _sft_warmup(run, stop)
            run.save(0)  # minutes of SFT are not paid twice: a resume starts after them (or where Ctrl-C stopped them)
            if stop.requested:
                log(f"Stopped after {run.warmed} of {t.sft.warmup_steps} SFT warm-up steps; resume with --resume {out}.")
                run.close()
                return warm | {"run/stop_reason": "signal"}
            run.tracker.log(0, warm)
            if t.steps == 0:  # supervised only (the oracle row of an ablation): keep what it learned
                run.close()
                return warm | {"run/stop_reason": "done"}
        started = time.perf_counter()
        for step in range(run.start, t.steps):
            if step > run.start and _out_of_time(t.time_limit_min, started, last.get("timing/step_s", 0.0), run):
                run.save(step)
                log(f"Time limit train.time_limit_min={t.time_limit_min} reached: stopped after step {step} of "
                    f"{t.steps} (checkpoint saved). The same command with --resume {out} trains the rest: the "
                    "limit counts from each start.")
                stop_reason = "time_limit"
                break
            last = train_step(run, step)
            run.done = step + 1
            if step == run.start + 1 and run.is_main:  # step 1 of a start pays warm-ups; step 2 sets the pace
                _forecast_time_limit(run, time.perf_counter() - started, last.get("timing/step_s", 0.0))
            if progress and run.is_main:
                progress(step + 1, t.steps, last)
            stop.requested = run.any_process(stop.requested)
            if (step + 1) % t.save_every == 0 or step + 1 == t.steps or stop.requested:
                run.save(step + 1)
            if stop.requested:
                log(f"Stopped at step {step + 1}; resume with --resume {out}.")
                stop_reason = "signal" if step + 1 < t.steps else "done"
                break
    run.close()
    return last | {"run/stop_reason": stop_reason}


def build_run(cfg: Config, out: Path, resume: Path | None, judge: Judge | None, wandb_project: str | None,
              log: Any) -> Run:
    """Everything a run needs before its first step: seeds, judge, model, learner, samplers, the
    SFT term, the RNG and the extensions (restored from a checkpoint when resuming), the run dir
    with its resolved config and runtime, and the trackers."""
    from selfredteam.judges import build_judge
    from selfredteam.policy.hf import TransformersPolicy

    t, g = cfg.train, cfg.generation
    ckpt = _check_resume(cfg, resume, log)
    pool = load_pool(cfg.data)
    if t.role_mode == "defender-only" and t.static_prompts:
        pool += load_pool(cfg.data, t.static_prompts)
    if problem := missing_class(pool, cfg.game.harmful_fraction, cfg.data.seeds):
        raise DataError(problem)
    sft_rows = load_sft_rows(t.sft.data) if t.sft.data and (t.sft.coef > 0 or t.sft.warmup_steps) else None
    accelerator = make_accelerator()
    info = runtime_info(cfg.model, cfg.run.threads)
    if accelerator:
        info |= {"processes": accelerator.num_processes, "distributed": str(accelerator.distributed_type).split(".")[-1]}
    log(f"Running on {describe(info)}" + (f", {info['processes']} processes ({info['distributed']})" if accelerator else "") + ".")
    judge = judge or build_judge(cfg.judge)
    rank = accelerator.process_index if accelerator else 0
    trainable = build_trainable(cfg, device=accelerator.device if accelerator else None, ckpt=ckpt)
    learner = Learner(trainable, t, accelerator, temperature=g.temperature)
    sampler = TransformersPolicy(trainable.model, trainable.tokenizer, cfg.model.name_or_path, g.batch_size,
                                 g.max_prompt_length)
    rollout = _vllm_rollouts(cfg, sampler)
    attacker, defender = _players(cfg, trainable, sampler, accelerator, rollout)
    sft = SftTerm(sft_rows, sampler, cfg.game.cot, t, g.defender_max_new_tokens) if sft_rows else None
    # Each data-parallel process plays its own games: its own seed stream.
    rng = random.Random(cfg.run.seed + 1_000_003 * rank)
    start, warmed, extensions = 0, 0, Extensions(t)
    if ckpt:
        state = load_training_state(ckpt, learner, rng)
        start = state["step"]
        # Checkpoints older than the key: one past step 0 came after any warm-up.
        warmed = state.get("sft_warmup_done", t.sft.warmup_steps if start else 0)
        extensions.load_state_dict(load_extensions(ckpt))
        if rank:  # checkpoints hold rank 0's RNG; other ranks start a fresh stream per step
            rng = random.Random(cfg.run.seed + 1_000_003 * rank + start)
        log(f"Resumed from {ckpt} at step {start}.")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
        save_runtime(out, info)
        if ckpt:
            _truncate_metrics(out / "metrics.jsonl", start)
    tracker = build_trackers(out, wandb_project, to_dict(cfg)) if rank == 0 else MultiTracker([])
    if rollout and start:  # the server samples with the resumed adapter
        _sync_adapter(rollout, trainable, out, start, rank == 0, learner)
    thoughts = [NEUTRAL_THOUGHT, HELPFUL_THOUGHT] + sorted({r.thought for r in sft_rows or [] if r.thought})
    return Run(cfg, out, log, judge, rank == 0, trainable, learner, sampler, rollout, attacker, defender, sft, rng,
               start, warmed, extensions, tracker, pool, thoughts)


def train_step(run: Run, step: int) -> dict[str, Any]:
    """One step, in the order of the module docstring: play, learn, log. Returns its metrics."""
    timings = Timings()
    with timings.timed("step"):
        generated_before = run.generated_seconds()
        with timings.timed("play"):
            games, cut = _play(run, step)
        extension_metrics = run.extensions.after_play(games)
        with timings.timed("learn"):
            samples = samples_from_games(games, TRAINED_ROLES[run.cfg.train.role_mode])
            stats = _learn(run, step, samples)
        # The collapse monitor reads the step's answers; its warnings go to the console.
        signals = step_signals(games, instruction_texts(), run.thoughts)
        for warning in run.monitor.update(step + 1, signals):
            run.log(f"[yellow]warning:[/] {warning}")
    t_gen, s = run.generated_seconds() - generated_before, timings.seconds
    tokens = sum(len(x.response_ids) for x in samples)
    metrics = game_metrics(games) | stats | signals | cut | extension_metrics | {
        "timing/generate_s": t_gen, "timing/judge_s": s["play"] - t_gen, "timing/learn_s": s["learn"],
        "timing/step_s": s["step"], "perf/tokens_per_s": tokens / t_gen if t_gen else 0.0}
    run.tracker.log(step + 1, metrics)
    every = run.cfg.train.games_log_every
    if run.is_main and every and (step + 1) % every == 0:
        write_jsonl(run.out / "games" / f"step_{step + 1}.jsonl", [g.to_dict() for g in games])
    return metrics


def _play(run: Run, step: int) -> tuple[list[GameRecord], dict[str, int]]:
    """The step's games with the current policy, and the prompts and judge inputs cut to budget.

    Seeds: a balanced batch (less the games that replay lost prompts, if replay is on). Each final
    prompt is answered samples_per_prompt times (the defender's GRPO/RLOO groups); with the
    extensions on, some games meet a past self and some replay prompts the defender lost. If the
    judge (or a remote policy) stays down after its retries, on any process, nothing of this step
    is learned: the completed steps are saved with the RNG as it was before the step, so --resume
    replays exactly this step."""
    cfg, t = run.cfg, run.cfg.train
    rng_before, torch_rng_before = run.rng.getstate(), torch.get_rng_state()
    seeds = sample_batch(run.pool, run.extensions.fresh_seeds(t.rollout_batch_size), cfg.game.harmful_fraction, run.rng)
    cut_before = (run.sampler.truncation.count, _judge_cuts(run.judge))
    # defender-only: no attacker turn (vanilla seeds, plus static_prompts mixed into the pool).
    no_revision = dataclasses.replace(cfg.game, revise_fraction=0.0)
    rules = no_revision if t.role_mode == "defender-only" else cfg.game
    params = {f"{role}_params": sampling_params(cfg.generation, role, cfg.game.cot) for role in ("attacker", "defender")}

    def play(group: list[Seed], att: Policy, dfd: Policy | None, replay: bool) -> list[GameRecord]:
        return play_games(group, att, run.judge, rules=no_revision if replay else rules, rng=run.rng, defender=dfd,
                          samples_per_prompt=t.samples_per_prompt, **params)

    down: EndpointError | None = None
    try:
        with sampling_params_gathered(run.trainable.model, run.learner.engine) if run.learner.lockstep \
                else contextlib.nullcontext():
            games = run.extensions.play(play, seeds, run.attacker, run.defender, run.trainable, run.rng) \
                if run.extensions.active else play(seeds, run.attacker, run.defender, False)
    except EndpointError as e:
        down = e
    if run.any_process(down is not None):  # all processes stop together
        run.rng.setstate(rng_before)
        torch.set_rng_state(torch_rng_before)
        run.save(step)
        run.close()
        why = down or "An endpoint failed on another process."
        raise EndpointError(f"{why} Saved a checkpoint after {step} completed steps; fix the "
                            f"endpoint and continue with --resume {run.out}.") from None
    return games, {"truncated/policy_prompts": run.sampler.truncation.count - cut_before[0],
                   "truncated/judge_inputs": _judge_cuts(run.judge) - cut_before[1]}


def _learn(run: Run, step: int, samples: list[Sample]) -> dict[str, Any]:
    """The update from the step's trainable turns (plus the auxiliary SFT term, on its schedule);
    then the extensions see the new weights and a vLLM server loads the new adapter."""
    sft_coef = run.sft.coef(step) if run.sft else 0.0
    stats = run.learner.update(samples, run.sft.draw(run.rng) if run.sft and sft_coef > 0 else None, sft_coef)
    if stats.get("loss/skipped_steps"):
        run.log(f"[yellow]warning:[/] step {step + 1}: {stats['loss/skipped_steps']:.0f} optimizer step(s) skipped, "
                f"the gradient not finite in {run.learner.nonfinite_where}.")
    run.extensions.after_update(step + 1, run.trainable)
    if run.rollout:  # the server samples the next step with this step's adapter
        try:
            _sync_adapter(run.rollout, run.trainable, run.out, step + 1, run.is_main, run.learner)
        except EndpointError as e:
            run.save(step + 1)
            run.close(together=False)  # the main process alone: the others wait at the sync's barrier
            raise EndpointError(f"{e} Saved a checkpoint after {step + 1} steps; continue with --resume {run.out}.") from None
    return stats


def _out_of_time(limit_min: float, started: float, step_s: float, run: Run) -> bool:
    """Would one more step (as long as the last) end past the limit? (All processes agree.)"""
    if not limit_min:  # no limit: no collective call either
        return False
    return run.any_process(_past_limit(limit_min, time.perf_counter() - started, step_s))


def _past_limit(limit_min: float, elapsed_s: float, step_s: float) -> bool:
    """The time limit's one rule: a step that would end past `limit_min` (0: none) is not started."""
    return bool(limit_min) and elapsed_s + step_s > 60 * limit_min


def time_limit_stop(limit_min: float, elapsed_s: float, step_s: float, done: int, total: int) -> int | None:
    """The step a run will stop after if the steps left each take `step_s` (the loop's own rule,
    `_past_limit`); None when all `total` fit."""
    while done < total and not _past_limit(limit_min, elapsed_s, step_s):
        elapsed_s += step_s
        done += 1
    return done if done < total else None


def _forecast_time_limit(run: Run, elapsed_s: float, step_s: float) -> None:
    """Say early that the time limit will cut this run short. A user on a slow machine otherwise
    learns it when the run stops, 18 minutes in on the cpu-demo preset, having trained a shorter
    run than the one they asked for (issue 30)."""
    t = run.cfg.train
    stop_at = time_limit_stop(t.time_limit_min, elapsed_s, step_s, run.done, t.steps)
    if stop_at is None:
        return
    need_min = (elapsed_s + (t.steps - run.done) * step_s) / 60
    run.log(f"[yellow]note:[/] at {step_s:.0f} s a step, the {t.steps - run.start} steps of this start need about "
            f"{need_min:.0f} min of training; train.time_limit_min={t.time_limit_min:g} will stop the run after about "
            f"step {stop_at} of {t.steps}, with a checkpoint (--resume {run.out} trains the rest). To train them all in "
            f"one go, start with --set train.time_limit_min={math.ceil(1.2 * need_min)} (0: no limit).")


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
    learner.max_over_processes(0)  # the barrier


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


@contextmanager
def _stops_with_a_checkpoint(run: Run) -> Iterator[None]:
    """TrainingDiverged (the gradient stayed non-finite, every such step skipped): save the finite
    weights after the last completed step (or the warm-up so far), then stop with the error."""
    try:
        yield
    except TrainingDiverged as e:
        run.save(run.done)
        run.close()
        raise TrainingDiverged(f"{e} Saved a checkpoint after {run.done} completed steps ({run.warmed} SFT warm-up "
                               f"steps); continue with --resume {run.out}.") from None


def _sft_warmup(run: Run, stop: StopFlag) -> dict[str, Any]:
    """train.sft.warmup_steps optimizer steps on the SFT rows alone, before the first RL step,
    from where a resumed run left them (`run.warmed`) until done or Ctrl-C / SIGTERM. A warm-up
    can take longer than the self-play after it (the oracle's three passes: ~24 min on 2 cores), so
    it says how far it is."""
    steps = run.cfg.train.sft.warmup_steps
    peak = (run.cfg.train.sft.lr or run.cfg.train.lr) / run.cfg.train.lr  # the warm-up's rate against train.lr
    first = run.warmed
    every = max(1, steps // 10)
    timings = Timings()
    nll: list[float] = []
    p_refuse: dict[str, list[float]] = {"harmful": [], "benign": []}
    finite_loss_skips = 0
    t0 = time.perf_counter()
    with timings.timed("warmup"):
        while run.warmed < steps and not stop.requested:
            scale = peak * lr_decay_scale(run.cfg.train.sft.warmup_schedule, run.warmed, steps)
            skipped = run.learner.skipped_steps
            step_nll = run.learner.sft_step(run.sft.draw(run.rng), lr_scale=scale)
            # A finite loss with a non-finite gradient: the backward pass went wrong, not the data.
            finite_loss_skips += run.learner.skipped_steps > skipped and math.isfinite(step_nll)
            run.warmed += 1
            stop.requested = run.any_process(stop.requested)
            if math.isfinite(step_nll):  # else a skipped step (Learner._step): nothing to average
                nll.append(step_nll)
                decision = run.learner.decision_stats
                for k in ("harmful", "benign"):
                    if f"sft/p_refuse_{k}" in decision:
                        p_refuse[k].append(decision[f"sft/p_refuse_{k}"])
            if run.warmed % every == 0 and run.warmed < steps and nll:
                run.log(f"SFT warm start: {run.warmed}/{steps} steps, NLL {_recent_mean(nll, every):.3f}"
                        f"{_refusal_odds(p_refuse, every)} "
                        f"({time.perf_counter() - t0:.0f} s).")
    if not nll:
        return {}
    run.log(f"SFT warm start: steps {first + 1}-{run.warmed} of {steps}, NLL {nll[0]:.3f} -> {nll[-1]:.3f}"
            f"{_refusal_odds(p_refuse, every)} ({timings.seconds['warmup']:.0f} s).")
    last = {f"warmup/p_refuse_{k}_last": _recent_mean(v, every) for k, v in p_refuse.items() if v}
    if run.learner.skipped_steps:
        run.log(f"SFT warm start: {run.learner.skipped_steps} steps skipped, their gradient not finite "
                f"({finite_loss_skips} of them with a finite loss); the last one's in {run.learner.nonfinite_where}.")
        last["warmup/skipped_steps"] = run.learner.skipped_steps
        last["warmup/skipped_finite_loss"] = finite_loss_skips
    return {"warmup/sft_steps": run.warmed, "warmup/sft_nll_first": nll[0], "warmup/sft_nll_last": nll[-1]} | last | \
        timings.metrics()


def _refusal_odds(p_refuse: dict[str, list[float]], last: int) -> str:
    """', P(refuse) harmful a / benign b' over the last `last` warm-up steps' rows ('' without labels)."""
    if not (p_refuse["harmful"] and p_refuse["benign"]):
        return ""
    h, b = (_recent_mean(p_refuse[k], last) for k in ("harmful", "benign"))
    return f", P(refuse) at the answer's start: harmful rows {h:.2f} / benign rows {b:.2f}"


def _recent_mean(values: list[float], n: int) -> float:
    """The mean of the last `n` of `values` (non-empty): what the warm-up's log lines report."""
    recent = values[-n:]
    return sum(recent) / len(recent)


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
