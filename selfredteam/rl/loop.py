"""`selfredteam train`: online self-play RL. Read top to bottom; each phase is one timed call.

    for step:
        seeds   <- sample a balanced batch from the pool
        games   <- play with the *current* policy (attacker revises, defender answers, judge labels)
        samples <- the trainable turns of those games, with their rewards
        stats   <- learner.update(samples)            (REINFORCE++ by default)
        log metrics + a sample of games; checkpoint every N steps and on Ctrl-C / SIGTERM
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from selfredteam.config import Config, save_config, to_dict
from selfredteam.data import Seed, load_pool, sample_batch
from selfredteam.errors import EndpointError, UserError
from selfredteam.game.play import GameRecord, play_games
from selfredteam.judges.base import Judge
from selfredteam.policy.base import (
    Generation,
    MeteredPolicy,
    Policy,
    SamplingParams,
    sampling_params,
)
from selfredteam.rl.checkpoint import find_checkpoint, load_checkpoint, read_state, save_checkpoint
from selfredteam.rl.learner import Learner, Sample
from selfredteam.rl.metrics import game_metrics
from selfredteam.rl.model import TrainablePolicy, build_trainable
from selfredteam.rl.sft import load_sft_pairs, sft_samples
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


def samples_from_games(games: list[GameRecord], roles: tuple[str, ...], groups: list[int]) -> list[Sample]:
    """Trainable turns: each role's prompt/response ids and reward; parse errors are skipped."""
    out = []
    for g, group in zip(games, groups):
        for role in roles:
            turn = g.attacker if role == "attacker" else g.defender
            reward = g.rewards[role]
            if turn is None or reward is None or turn.generation is None or not turn.generation.completion_ids:
                continue
            gen = turn.generation
            out.append(Sample(role, gen.prompt_ids, gen.completion_ids, reward, group, gen.logprobs,
                              gen.trunk_states))
    return out


def _check_resume(cfg: Config, resume: Path | None) -> Path | None:
    """Validate a resume dir before anything is written (a wrong one must touch nothing)."""
    if resume is None:
        return None
    ckpt = find_checkpoint(resume)
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
    """Run online self-play RL; returns the last step's metrics."""
    from selfredteam.judges import build_judge
    from selfredteam.policy.hf import TransformersPolicy

    t, g = cfg.train, cfg.generation
    ckpt = _check_resume(cfg, resume)
    pool = load_pool(cfg.data)
    if t.role_mode == "defender-only" and t.static_prompts:
        pool += load_pool(cfg.data, t.static_prompts)
    judge = judge or build_judge(cfg.judge)
    accelerator = _accelerator()
    rank = accelerator.process_index if accelerator else 0
    is_main = rank == 0
    trainable = build_trainable(cfg, device=accelerator.device if accelerator else None)
    learner = Learner(trainable, t, accelerator, temperature=g.temperature)
    sampler = TransformersPolicy(trainable.model, trainable.tokenizer, cfg.model.name_or_path, g.batch_size)
    # The learner reuses the trunk states captured while sampling (single process: under DDP it
    # runs every layer).
    capture = trainable.frozen_layers > 0 and accelerator is None
    attacker: Policy = RoleView(trainable, sampler, "attacker", capture_trunk=capture)
    defender: Policy = attacker if trainable.sharing == "shared" else RoleView(
        trainable, sampler, "defender", capture_trunk=capture)
    if t.role_mode == "attacker-only":
        defender = _frozen_defender(cfg, trainable, sampler)
    attacker, defender = MeteredPolicy(attacker), (MeteredPolicy(defender) if defender is not attacker else None)
    # Each data-parallel process plays its own games: its own seed stream.
    rng = random.Random(cfg.run.seed + 1_000_003 * rank)
    start = 0
    if ckpt:
        start = load_checkpoint(ckpt, trainable, learner, rng)["step"]
        if rank:  # checkpoints hold rank 0's RNG; other ranks start a fresh stream per step
            rng = random.Random(cfg.run.seed + 1_000_003 * rank + start)
        log(f"Resumed from {ckpt} at step {start}.")
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
        if ckpt:
            _truncate_metrics(out / "metrics.jsonl", start)
    tracker = build_trackers(out, wandb_project, to_dict(cfg)) if is_main else MultiTracker([])
    sft_pairs = load_sft_pairs(t.sft_data) if t.sft_data and t.sft_coef > 0 else None
    revise = 0.0 if t.role_mode == "defender-only" else cfg.game.revise_fraction
    roles = TRAINED_ROLES[t.role_mode]
    attacker_params, defender_params = sampling_params(g, "attacker", cfg.game.cot), sampling_params(g, "defender", cfg.game.cot)
    last: dict[str, Any] = {}
    stop = StopFlag()
    with stop.installed(log):
        for step in range(start, t.steps):
            t0 = time.perf_counter()
            rng_before, torch_rng_before = rng.getstate(), torch.get_rng_state()
            # 1. seeds: a balanced batch; each seed played samples_per_prompt times (GRPO/RLOO groups).
            base = sample_batch(pool, t.rollout_batch_size, cfg.game.harmful_fraction, rng)
            seeds: list[Seed] = [s for s in base for _ in range(t.samples_per_prompt)]
            groups = [i for i in range(len(base)) for _ in range(t.samples_per_prompt)]
            # 2. play with the current policy (generation + judge).
            gen_s0 = attacker.seconds + (defender.seconds if defender else 0.0)
            try:
                games = play_games(
                    seeds, attacker, judge, reward_mode=cfg.game.reward_mode, cot=cfg.game.cot,
                    revise_fraction=revise, rng=rng, defender=defender,
                    attacker_params=attacker_params, defender_params=defender_params,
                )
            except EndpointError as e:
                # The judge (or a remote policy) stayed down after its retries. Nothing of this
                # step was learned: save the completed steps with the RNG as it was before the
                # step, so --resume replays exactly this step.
                rng.setstate(rng_before)
                torch.set_rng_state(torch_rng_before)
                if is_main:
                    save_checkpoint(out, step, trainable, learner, rng, {"config": to_dict(cfg)})
                tracker.close()
                raise EndpointError(f"{e} Saved a checkpoint after {step} completed steps; fix the "
                                    f"endpoint and continue with --resume {out}.") from None
            t_play = time.perf_counter() - t0
            t_gen = attacker.seconds + (defender.seconds if defender else 0.0) - gen_s0
            # 3. learn from the trainable turns.
            t1 = time.perf_counter()
            samples = samples_from_games(games, roles, groups)
            sft = sft_samples(sft_pairs, t.sft_batch_size or t.micro_batch_size, sampler, cfg.game.cot, rng) if sft_pairs else None
            stats = learner.update(samples, sft)
            t_learn = time.perf_counter() - t1
            tokens = sum(len(s.response_ids) for s in samples)
            metrics = game_metrics(games) | stats | {
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
            if is_main and ((step + 1) % t.save_every == 0 or step + 1 == t.steps or stop_now):
                save_checkpoint(out, step + 1, trainable, learner, rng, {"config": to_dict(cfg)})
            stop.requested = stop_now
            if stop.requested:
                log(f"Stopped at step {step + 1}; resume with --resume {out}.")
                break
    tracker.close()
    return last


def _accelerator() -> Any | None:
    """An accelerate Accelerator when launched with several processes (accelerate launch /
    torchrun set WORLD_SIZE); None in a plain single-process run."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    return Accelerator()


def _frozen_defender(cfg: Config, trainable: TrainablePolicy, sampler: Any) -> Policy:
    """attacker-only: the defender is another model, or the reference (adapters disabled)."""
    if cfg.train.defender_model:
        from selfredteam.config import ModelConfig
        from selfredteam.policy.hf import TransformersPolicy

        mc = ModelConfig(**{**to_dict(cfg)["model"], "name_or_path": cfg.train.defender_model})
        return TransformersPolicy.from_config(mc, cfg.generation.batch_size, cfg.run.threads, cfg.run.seed)
    if not trainable.is_lora:
        raise UserError("attacker-only with full fine-tuning needs train.defender_model (a frozen defender).")
    return RoleView(trainable, sampler, "defender", reference=True)


def _truncate_metrics(path: Path, step: int) -> None:
    """After a resume, drop metric rows of steps that ran after the checkpoint (they are redone)."""
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in keep))


def _write_games(path: Path, games: list[GameRecord]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for g in games:
            f.write(json.dumps(g.to_dict(), ensure_ascii=False) + "\n")
