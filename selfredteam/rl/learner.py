"""The learner: turn played games into one policy update (REINFORCE++ by default).

update(samples):
  1. reference log-probs of every sampled response (adapters disabled, no grad);
  2. per-token KL to the reference and advantages over the *whole* rollout batch;
  3. for each epoch and train batch: micro-batches with gradient accumulation, the clipped
     surrogate loss, grad-norm clipping, AdamW step, LR warm-up.
Old log-probs come from generation when the backend reports them (saving a forward pass),
else from a no-grad pass here.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import KW_ONLY, dataclass
from typing import Any

import torch

from selfredteam.config import TrainConfig
from selfredteam.errors import TrainingDiverged
from selfredteam.rl.advantages import (
    KL_IN_REWARD,
    compute_advantages,
    kl_penalty,
    masked_mean,
    policy_loss,
)
from selfredteam.rl.distributed import (
    init_deepspeed,
    is_deepspeed,
    is_fsdp,
    load_optimizer_state,
    optimizer_state,
)
from selfredteam.rl.logprobs import (
    PackedBatch,
    gather_rows,
    pack,
    packs_rows,
    response_logprobs,
    scatter_rows,
)
from selfredteam.rl.model import TrainablePolicy
from selfredteam.rl.timing import Timings

SFT_TRUNK_BYTES = 1 << 30
"""The most memory the SFT rows' kept trunk states may take (cpu-demo's 78 rows: ~40 MB)."""

NONFINITE_LIMIT = 5
"""Optimizer steps in a row with a NaN or infinite gradient (each skipped) before training stops."""

LEARN_PHASES = ("learn_ref_logprob", "learn_old_logprob", "learn_fwd_bwd", "learn_sft", "learn_optimizer")
"""The update's timed phases (metrics `timing/<phase>_s`)."""


@dataclass
class Sample:
    """One trainable turn: a role's prompt, its sampled response and the game reward."""

    role: str
    prompt_ids: list[int]
    response_ids: list[int]
    reward: float
    _: KW_ONLY  # the rest by name: a field inserted here once shifted the trunk states into `weights`
    group: int = 0
    """Samples of one role for the same prompt share a group (GRPO/RLOO baselines); >= 0."""
    prompt_class: str = ""
    """The seed's label (`harmful` / `benign`): per-class advantage normalisation and metrics."""
    old_logprobs: list[float] | None = None
    weights: list[float] | None = None
    """SFT rows: each response token's weight in the NLL (None: all 1; train.sft.decision_weight)."""
    decision_at: int = -1
    """SFT rows: the response index of the answer's first token, where the reply refuses or starts
    to help (-1: none); `refusal_openers` are the tokens that open a refusal there."""
    refusal_openers: tuple[int, ...] = ()
    """SFT rows: first tokens of the set's refusals (`SftTerm`); P(refuse) at `decision_at` is
    their probability mass (logged as sft/p_refuse_*, trained by train.sft.decision_bce)."""
    trunk: Any = None
    """Hidden states after the frozen trunk ([prompt + response, H]), if any: captured while
    sampling (game turns) or on an SFT row's first pass (`Learner._sft_logprobs`)."""


@dataclass
class Targets:
    """A rollout batch's per-token tensors, [samples, longest response]: what every train batch
    of the update reads (the mask of real response tokens, the log-probs before the update under
    the policy and the reference, and the advantages)."""

    mask: torch.Tensor
    old: torch.Tensor
    ref: torch.Tensor
    adv: torch.Tensor


def decision_bce(refuse_logp: torch.Tensor, labels: list[str], answer_weight: float = 1.0) -> torch.Tensor:
    """Summed binary cross-entropy of the refusal decision: -log P(refuse) on `harmful` rows,
    -log(1 - P(refuse)) on `benign` ones (times `answer_weight`), nothing on others; from
    log P(refuse) for stability."""
    y = torch.tensor([1.0 if c == "harmful" else 0.0 for c in labels], device=refuse_logp.device)
    on = torch.tensor([row_weight(c, answer_weight) if c in ("harmful", "benign") else 0.0 for c in labels],
                      device=refuse_logp.device)
    lp = refuse_logp.clamp(max=-1e-6)  # P(refuse) < 1: log(1 - P) stays finite
    per_row = -(y * lp + (1 - y) * torch.log(-torch.expm1(lp)))
    return (per_row * on).sum()


def nonfinite_grads(model: torch.nn.Module, show: int = 3) -> str:
    """Which trainable tensors' gradients hold a NaN or inf, for the log of a skipped step: one
    layer's attention, the top layer only, or every tensor point to different causes (a kernel, an
    overflow in one place, a bad loss), and the step's gradients are dropped right after."""
    named = [(n, p.grad) for n, p in model.named_parameters() if p.requires_grad and p.grad is not None]
    if not named:
        return "no trainable tensor with a gradient"
    bad_flags = torch.stack([~torch.isfinite(_local(g)).all() for _, g in named]).tolist()  # one sync
    bad = [n.removeprefix("base_model.model.").removeprefix("model.").removesuffix(".weight")
           for (n, _), flag in zip(named, bad_flags) if flag]
    if not bad:
        return f"none of {len(named)} trainable tensors (each gradient finite: their norm overflowed)"
    more = f" and {len(bad) - show} more" if len(bad) > show else ""
    return f"{len(bad)} of {len(named)} trainable tensors: {', '.join(bad[:show])}{more}"


def row_weight(label: str, answer_weight: float) -> float:
    """An SFT row's weight in the loss: `answer_weight` (train.sft.answer_weight) for an answer row
    (label benign), 1 for every other row."""
    return answer_weight if label == "benign" else 1.0


def rl_lr_lambda(cfg: TrainConfig):
    """The RL steps' rate as a fraction of train.lr at the scheduler's step (one per RL update): a
    linear ramp over train.warmup_steps times the train.lr_schedule decay over train.steps."""
    def scale(step: int) -> float:
        ramp = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
        return ramp * lr_decay_scale(cfg.lr_schedule, step, cfg.steps)
    return scale


def lr_decay_scale(schedule: str, step: int, steps: int) -> float:
    """A rate at the 0-based `step` of `steps`, as a fraction of its peak (train.lr_schedule for
    the RL steps, train.sft.warmup_schedule for the SFT warm-up): 1 throughout, or from 1 at the
    first step down to 1/steps (linear) or near 0 (cosine) at the last, so the last update is a
    small one."""
    if schedule == "constant" or steps <= 1:
        return 1.0
    done = step / steps
    return 1.0 - done if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * done))


class Learner:
    """Single process by default; under `accelerate launch` the gradient pass runs through the
    accelerator-prepared model (DDP, or FSDP2 with the optimizer prepared with it) or a DeepSpeed
    engine, advantages are whitened across processes, and the loss is normalised by the global
    token count, so N processes on N shards update exactly like one process on all the data.
    Under FSDP and ZeRO-3 every forward is a collective: every process runs as many as the
    busiest one (padding passes)."""

    def __init__(self, policy: TrainablePolicy, cfg: TrainConfig, accelerator: Any | None = None,
                 temperature: float = 1.0) -> None:
        self.policy = policy
        self.cfg = cfg
        self.temperature = temperature if temperature > 0 else 1.0
        """Sampling temperature: the optimised policy is softmax(logits / T), as sampled."""
        self.pad_id = policy.tokenizer.pad_token_id
        self.acc = accelerator
        self.world = accelerator.num_processes if accelerator is not None else 1
        self.fsdp = is_fsdp(accelerator)
        self.train_model = policy.model
        self.optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.engine = None
        """The DeepSpeed engine: it owns backward, the step and clipping (the `_backward`/`_step` helpers)."""
        if is_deepspeed(accelerator):
            self.engine = self.train_model = init_deepspeed(policy.model, self.optimizer, accelerator, cfg.max_grad_norm)
            policy.sharded = True
        elif self.fsdp:
            # FSDP2 shards the model in place and the optimizer must follow its new parameters.
            self.train_model, self.optimizer = accelerator.prepare(policy.model, self.optimizer)
            policy.sharded = True
        elif self.world > 1:
            self.train_model = accelerator.prepare_model(policy.model)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, rl_lr_lambda(cfg))
        self._sft_trunk_bytes = 0
        self.skipped_steps = 0
        """Optimizer steps skipped because their gradient was not finite (`_step`), this process's run."""
        self.nonfinite_streak = 0
        self.nonfinite_where = ""
        """The last skipped step's trainable tensors with a non-finite gradient (`nonfinite_grads`)."""
        self.decision_stats: dict[str, float] = {}
        """The last SFT pass's mean P(refuse) at the decision point per label, and its decision BCE."""
        self.lockstep = self.fsdp or self.engine is not None
        """Every forward is a collective (FSDP, ZeRO-3): all processes run the same number."""
        self.packed = packs_rows(self.train_model)
        """A micro-batch is one sequence, its shared prompt prefix computed once (CPU; `packs_rows`)."""

    # -- data-parallel helpers (identities in one process) --------------------------------
    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        t = t.detach().clone().float()
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def max_over_processes(self, n: int) -> int:
        """The largest `n` over all processes (a collective; `n` itself in one process): how many
        passes every process must run, or whether any process asks to stop."""
        if self.world == 1:
            return n
        t = torch.tensor([n], dtype=torch.long)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def _sync_context(self, last: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of a train batch (DDP;
        FSDP reduce-scatters every micro-batch)."""
        if self.world == 1 or last or self.lockstep:
            return contextlib.nullcontext()
        return self.acc.no_sync(self.train_model)

    def _padded(self, micro: list[list[int]]) -> list[tuple[list[int], bool]]:
        """(micro-batch, real?) pairs: under FSDP and ZeRO-3 as many as on the busiest process, the extra ones
        repeating the first micro-batch (their result is dropped), since every forward of a
        sharded model is a collective."""
        n = self.max_over_processes(len(micro)) if self.lockstep else len(micro)
        return [(micro[k], True) if k < len(micro) else (micro[0], False) for k in range(n)]

    # -- batching -----------------------------------------------------------------------
    def _micro_batches(self, idx: list[int], samples: list[Sample]) -> list[list[int]]:
        """Split indices into micro-batches of one role each (role adapters), by length."""
        out = []
        for role in sorted({samples[i].role for i in idx}):
            ids = sorted((i for i in idx if samples[i].role == role),
                         key=lambda i: len(samples[i].prompt_ids) + len(samples[i].response_ids))
            out += [ids[k : k + self.cfg.micro_batch_size] for k in range(0, len(ids), self.cfg.micro_batch_size)]
        return out

    def _pack(self, samples: list[Sample], idx: list[int]) -> PackedBatch:
        return pack([samples[i].prompt_ids for i in idx], [samples[i].response_ids for i in idx], self.pad_id,
                    packed=self.packed)

    @torch.no_grad()
    def _score(self, samples: list[Sample], use_reference: bool,
               trunk: list[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
        """Log-probs of each sample's response under the reference (or current) policy.

        With `trunk` (a list as long as `samples`): when every entry already holds the sample's
        frozen-trunk states (captured while sampling), only the top layers run, from them; else
        the full pass runs and fills the list for the policy passes."""
        out: list[torch.Tensor | None] = [None] * len(samples)
        reuse = trunk is not None and all(t is not None for t in trunk)
        for mb, real in self._padded(self._micro_batches(list(range(len(samples))), samples)):
            batch = self._pack(samples, mb)
            captured: list[torch.Tensor] = []
            capture = self.policy.capture_trunk(captured) if trunk is not None and not reuse else contextlib.nullcontext()
            top = self.policy.top_layers_only() if reuse else contextlib.nullcontext()
            embeds = scatter_rows(batch, [trunk[i] for i in mb]) if reuse else None
            scorer = self.policy.reference() if use_reference else contextlib.nullcontext(self.policy.model)
            with self.policy.role(samples[mb[0]].role), capture, top, scorer as model:
                lp = response_logprobs(model, batch, temperature=self.temperature, inputs_embeds=embeds).logp
            if not real:
                continue
            states = gather_rows(batch, captured[0]) if captured else None
            for row, i in enumerate(mb):
                out[i] = lp[row, : len(samples[i].response_ids)].cpu()
                if states is not None:
                    trunk[i] = states[row]
        return [t for t in out if t is not None]

    def _policy_logprobs(self, batch: PackedBatch, trunk_rows: list[torch.Tensor] | None):
        """Policy log-probs and entropies with grad; from the cached trunk states when given."""
        if trunk_rows is None:
            return response_logprobs(self.train_model, batch, with_entropy=True, temperature=self.temperature)
        with self.policy.top_layers_only():
            return response_logprobs(self.train_model, batch, with_entropy=True, temperature=self.temperature,
                                     inputs_embeds=scatter_rows(batch, trunk_rows))

    def sft_backward(self, sft: list[Sample], coef: float) -> float:
        """Auxiliary SFT: coef x NLL of reference answers, accumulated into the current gradients.
        `train.sft.normalize`: per token over all target tokens, or per row then over rows.
        Returns the NLL, token weights (train.sft.decision_weight) and row weights
        (train.sft.answer_weight) applied, `coef` not.

        Rows with a decision point (`Sample.decision_at`) and a label also give P(refuse) there
        (`self.decision_stats`), and with train.sft.decision_bce its binary cross-entropy joins the
        loss: refusal rows raise the mass on refusal openers, answer rows lower it. The NLL of an
        answer lowers a refusal opener only as much as that opener's probability, so a row the
        model would refuse is barely corrected; the BCE's pull grows as P(refuse) nears 1."""
        if not sft or coef <= 0:
            return 0.0
        per_sequence = self.cfg.sft.normalize == "sequence"
        answer_weight = self.cfg.sft.answer_weight
        row_w = [row_weight(s.prompt_class, answer_weight) for s in sft]
        n_tokens = float(sum(w * (sum(s.weights) if s.weights else len(s.response_ids)) for w, s in zip(row_w, sft)))
        decided = {i for i, s in enumerate(sft) if s.decision_at >= 0 and s.prompt_class in ("harmful", "benign")}
        decided_w = sum(row_w[i] for i in decided)
        openers = next((torch.tensor(sft[i].refusal_openers) for i in decided if sft[i].refusal_openers), None)
        total, bce_total = 0.0, 0.0
        p_refuse: dict[str, list[float]] = {"harmful": [], "benign": []}
        for mb, real in self._padded(self._micro_batches(list(range(len(sft))), sft)):
            batch = self._pack(sft, mb)
            set_at = None
            if openers is not None:
                cols = torch.tensor([sft[i].decision_at if i in decided else -1 for i in mb])
                set_at = (cols, openers)
            with self.policy.role("defender"):
                lp, _, refuse_lp = self._sft_logprobs(sft, mb, batch, set_at)
            weights = batch.response_mask.clone()
            for row, i in enumerate(mb):
                if sft[i].weights:
                    weights[row, : len(sft[i].weights)] = torch.tensor(sft[i].weights)
            lp = lp * weights.to(lp.device)
            rows_w = torch.tensor([row_w[i] for i in mb], device=lp.device)
            if per_sequence:
                lengths = weights.sum(1).clamp(min=1).to(lp.device)
                nll = -(rows_w * lp.sum(1) / lengths).sum() / sum(row_w)
            else:
                nll = -(rows_w[:, None] * lp).sum() / n_tokens
            loss = nll
            if refuse_lp is not None:
                bce = decision_bce(refuse_lp, [sft[i].prompt_class if i in decided else "" for i in mb], answer_weight)
                if self.cfg.sft.decision_bce > 0:
                    loss = loss + self.cfg.sft.decision_bce * bce / decided_w
                if real:
                    bce_total += bce.item() / decided_w
                    for row, i in enumerate(mb):
                        if i in decided:
                            p_refuse[sft[i].prompt_class].append(float(refuse_lp[row].detach().exp()))
            self._backward(coef * loss * float(real))
            total += nll.item() if real else 0.0
        self.decision_stats = {f"sft/p_refuse_{k}": sum(v) / len(v) for k, v in p_refuse.items() if v}
        if openers is not None:
            self.decision_stats["sft/decision_bce"] = bce_total
        return total

    def _sft_logprobs(self, rows: list[Sample], mb: list[int], batch: PackedBatch,
                      set_at: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Log-probs of SFT targets under the untempered policy, with grad. An SFT row is the same
        tokens every time it is drawn, so its frozen-trunk states never change: the first pass over
        a row keeps them on the row (up to SFT_TRUNK_BYTES in all) and later draws run only the
        top layers, as the game samples do (an SFT warm-up of several passes pays the trunk once)."""
        if not (self.policy.frozen_layers and self.world == 1):
            return response_logprobs(self.train_model, batch, set_at=set_at)
        kept = [rows[i].trunk for i in mb]
        if all(t is not None for t in kept):
            with self.policy.top_layers_only():
                return response_logprobs(self.train_model, batch, inputs_embeds=scatter_rows(batch, kept), set_at=set_at)
        captured: list[torch.Tensor] = []
        with self.policy.capture_trunk(captured):
            out = response_logprobs(self.train_model, batch, set_at=set_at)
        for i, states in zip(mb, gather_rows(batch, captured[0].detach())):
            if rows[i].trunk is None and self._sft_trunk_bytes + states.nbytes <= SFT_TRUNK_BYTES:
                rows[i].trunk = states
                self._sft_trunk_bytes += states.nbytes
        return out

    def sft_step(self, sft: list[Sample], lr_scale: float = 1.0) -> float:
        """One optimizer step on the SFT loss alone (train.sft.warmup_steps) at `lr_scale` x
        train.lr (the warm-up's own peak and schedule: train.sft.lr, train.sft.warmup_schedule), then
        the RL steps get their scheduled rate back; returns the NLL. Set from train.lr, not from
        the current rate: before the first RL step that rate is the train.warmup_steps ramp's first
        value, which would silently shrink every warm-up step by the ramp's length."""
        self.policy.model.eval()  # no dropout, as in the RL passes
        self._zero_grad()
        nll = self.sft_backward(sft, 1.0)
        groups = self.optimizer.param_groups
        rates = [g["lr"] for g in groups]
        for g in groups:
            g["lr"] = self.cfg.lr * lr_scale
        try:
            self._step()
        finally:
            for g, lr in zip(groups, rates):
                g["lr"] = lr
        return nll

    # -- one optimizer step: backward passes, clipping, the update --------------------------
    def _zero_grad(self) -> None:
        if self.engine is None:  # the engine clears its partitioned gradients in its own step
            self.optimizer.zero_grad(set_to_none=True)

    def _backward(self, loss: torch.Tensor) -> None:
        if self.engine is not None:
            self.engine.backward(loss)  # accumulates into the partitions; step() is the boundary
        else:
            loss.backward()

    def _step(self) -> float:
        """Clip to train.max_grad_norm and update; returns the gradient norm before clipping.

        A step whose gradient norm is NaN or infinite is skipped, its gradients dropped: one such
        batch would otherwise make every weight NaN for good (a CUDA bf16 SFT warm-up went NaN
        at step ~300 and trained 240 more steps on NaN, BENCHMARKS.md). NONFINITE_LIMIT skips in a
        row raise TrainingDiverged, with the weights still finite for the checkpoint."""
        if self.engine is not None:
            self.engine.step()  # clips by the config's gradient_clipping, then updates
            return float(self.engine.get_global_grad_norm() or 0.0)
        params, utils = self.policy.trainable_parameters(), torch.nn.utils
        split = hasattr(utils, "get_total_norm")  # torch >= 2.6: clip_grad_norm_'s two halves
        gn = utils.get_total_norm([p.grad for p in params if p.grad is not None]) if split else \
            utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        norm = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)  # a DTensor under FSDP
        if not math.isfinite(norm):  # the same on every process: the norm is global
            # Named before the gradients are dropped and, with the split, before a clip by a NaN
            # norm makes every one of them NaN.
            self.nonfinite_where = nonfinite_grads(self.policy.model)
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.nonfinite_streak += 1
            if self.nonfinite_streak >= NONFINITE_LIMIT:
                raise TrainingDiverged(
                    f"The gradient was {norm} for {self.nonfinite_streak} optimizer steps in a row (each skipped, "
                    f"{self.skipped_steps} in this run; the weights are still finite; the last one in "
                    f"{self.nonfinite_where}). Lower train.lr, or "
                    "train in float32 (model.dtype=float32), and resume from the checkpoint.")
            return norm
        if split:
            utils.clip_grads_with_norm_(params, self.cfg.max_grad_norm, gn)
        self.nonfinite_streak = 0
        self.optimizer.step()
        return norm

    def _grads(self) -> list[torch.Tensor | None]:
        return [None if p.grad is None else _local(p.grad).detach().clone() for p in self.policy.trainable_parameters()]

    def _norm_codes(self, samples: list[Sample]) -> torch.Tensor | None:
        """Normalisation group of each sample (advantages.N_NORM_GROUPS codes), per train.advantage_norm."""
        mode = self.cfg.advantage_norm
        if mode == "batch":
            return None
        def code(s: Sample) -> int:
            if s.role == "attacker":
                return 0
            return 2 if mode == "role_class" and s.prompt_class == "benign" else 1
        return torch.tensor([code(s) for s in samples])

    # -- the update -----------------------------------------------------------------------
    def update(self, samples: list[Sample], sft: list[Sample] | None = None, sft_coef: float = 0.0) -> dict[str, float]:
        """One policy update from a rollout batch, in the phases of the module docstring; returns
        its metrics (losses, KL, advantages per role, and where the time went)."""
        if not samples and self.world == 1:
            return {}
        placeholder = not samples
        if placeholder:  # this process drew no trainable turn; it still takes part in the collectives
            samples = [Sample("defender", [self.pad_id], [self.pad_id], 0.0)]
        self.policy.model.eval()  # no dropout: log-probs must match those at sampling time
        # Wall-clock split of the update (metrics `timing/learn_*_s`; benchmarks/learner_step.py).
        timings = Timings(LEARN_PHASES)
        with timings.timed("learn_ref_logprob"):
            trunk = self._captured_trunk(samples)
            ref_lp = self._score(samples, use_reference=True, trunk=trunk)
        with timings.timed("learn_old_logprob"):
            old_lp = self._old_logprobs(samples)
        targets = self._advantages(samples, old_lp, ref_lp, placeholder)
        skipped = self.skipped_steps
        stats = self._optimize(samples, targets, trunk, sft if sft_coef > 0 else None, sft_coef, timings)
        if self.skipped_steps > skipped:  # the skipped steps' losses are not finite: they say nothing
            stats = {k: [x for x in v if math.isfinite(x)] for k, v in stats.items()}
            stats["loss/skipped_steps"] = [float(self.skipped_steps - skipped)]
        stats["lr"] = [self.optimizer.param_groups[0]["lr"]]  # the rate this update ran at, not the next one's
        self.scheduler.step()
        self.policy.model.eval()
        return self._summary(stats, targets, samples, sft_coef if sft else 0.0, timings)

    def _captured_trunk(self, samples: list[Sample]) -> list[Any] | None:
        """Shared frozen trunk (LoRA on the top layers only): the reference pass keeps the bottom
        layers' output and the policy passes start there; single process only (DDP wraps the full
        module). States captured while sampling are used (cloned: they were made in inference
        mode); if any is missing, the reference pass fills them all in."""
        if not (self.policy.frozen_layers and self.world == 1):
            return None
        given = [s.trunk for s in samples]
        ok = all(t is not None and t.shape[0] == len(s.prompt_ids) + len(s.response_ids) for t, s in zip(given, samples))
        return [t.clone() for t in given] if ok else [None] * len(samples)

    def _old_logprobs(self, samples: list[Sample]) -> list[torch.Tensor]:
        """The sampler's log-probs when the backend reported them all (no forward pass), else a
        no-grad pass of the policy as it is before the update."""
        if all(s.old_logprobs is not None and len(s.old_logprobs) == len(s.response_ids) for s in samples):
            return [torch.tensor(s.old_logprobs) for s in samples]
        return self._score(samples, use_reference=False)

    def _advantages(self, samples: list[Sample], old_lp: list[torch.Tensor], ref_lp: list[torch.Tensor],
                    placeholder: bool) -> Targets:
        """Per-token KL to the reference and advantages over the *whole* rollout batch (padded to
        a common length), whitened across processes."""
        cfg = self.cfg
        R = max(len(s.response_ids) for s in samples)
        mask, old, ref = torch.zeros(len(samples), R), torch.zeros(len(samples), R), torch.zeros(len(samples), R)
        for i, s in enumerate(samples):
            n = len(s.response_ids)
            mask[i, :n] = 1
            old[i, :n] = old_lp[i]
            ref[i, :n] = ref_lp[i]
        if placeholder:
            mask.zero_()
        kl = kl_penalty(old, ref, cfg.kl_estimator) * mask
        rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)
        groups = torch.tensor([s.group for s in samples])
        adv = compute_advantages(cfg.algorithm, rewards, kl, mask, cfg.kl_coef, groups, self._norm_codes(samples),
                                 reduce=self._sum)
        return Targets(mask, old, ref, adv)

    def _optimize(self, samples: list[Sample], targets: Targets, trunk: list[Any] | None, sft: list[Sample] | None,
                  sft_coef: float, timings: Timings) -> dict[str, list[float]]:
        """Epochs x train batches, one optimizer step each. Every process runs the same number of
        optimizer steps and backward passes (DDP would hang otherwise): a process short of train
        batches runs the missing ones on a real micro-batch with zero weight."""
        cfg = self.cfg
        stats: dict[str, list[float]] = {"loss/policy": [], "loss/grad_norm": [], "loss/clip_frac": [],
                                         "loss/entropy": [], "loss/sampler_ratio_dev_max": []}
        order = list(range(len(samples)))
        batches = [order[k : k + cfg.train_batch_size] for k in range(0, len(order), cfg.train_batch_size)]
        n_batches = self.max_over_processes(len(batches))
        for epoch in range(cfg.epochs_per_batch):
            for b in range(n_batches):
                idx = batches[b] if b < len(batches) else []
                self._zero_grad()
                with timings.timed("learn_fwd_bwd"):
                    batch_loss = self._policy_backward(samples, idx, targets, trunk, stats, first=epoch == 0 and b == 0)
                if b == 0 and sft:
                    with timings.timed("learn_sft"):
                        self._sft_term(sft, sft_coef, stats)
                with timings.timed("learn_optimizer"):
                    stats["loss/grad_norm"].append(self._step())
                    stats["loss/policy"].append(batch_loss)
        return stats

    def _policy_backward(self, samples: list[Sample], idx: list[int], targets: Targets, trunk: list[Any] | None,
                         stats: dict[str, list[float]], first: bool) -> float:
        """Gradients of one train batch's clipped surrogate (plus the k3 KL term when the KL is not
        in the reward), accumulated over its micro-batches; returns the batch's loss. `first`: the
        batch before any update, where the sampler/learner ratio says how far off-policy sampling was."""
        cfg = self.cfg
        # Normaliser: real response tokens of this train batch over all processes.
        n_tokens = max(float(self._sum(targets.mask[idx].sum())), 1.0)
        local = self._micro_batches(idx, samples)
        n_micro = self.max_over_processes(len(local))
        batch_loss = 0.0
        for k in range(n_micro):
            mb, weight = (local[k], 1.0) if k < len(local) else ([0], 0.0)
            batch = self._pack(samples, mb)
            with self._sync_context(last=k == n_micro - 1), self.policy.role(samples[mb[0]].role):
                lp, ent, _ = self._policy_logprobs(batch, [trunk[i] for i in mb] if trunk else None)
                w = lp.shape[1]
                m = batch.response_mask.to(lp.device)
                loss, info = policy_loss(lp, targets.old[mb, :w].to(lp.device), targets.adv[mb, :w].to(lp.device), m,
                                         cfg.clip_eps, normalizer=n_tokens)
                if cfg.algorithm not in KL_IN_REWARD:
                    k3 = kl_penalty(lp, targets.ref[mb, :w].to(lp.device), "k3")
                    loss = loss + cfg.kl_coef * (k3 * m).sum() / n_tokens
                # DDP averages gradients over processes; scale back to a global sum.
                self._backward(loss * weight * self.world)
            if weight:
                batch_loss += loss.item()
                stats["loss/clip_frac"].append(info["clip_frac"])
                if first:
                    stats["loss/sampler_ratio_dev_max"].append(info["ratio_dev_max"])
                stats["loss/entropy"].append(float(masked_mean(ent, m)))
        return batch_loss

    def _sft_term(self, sft: list[Sample], coef: float, stats: dict[str, list[float]]) -> None:
        """The auxiliary SFT gradient, and how hard it pulls against the game: its gradient's norm
        over the policy gradient's (LoRA only: a copy of full-model gradients costs a model)."""
        pg = self._grads() if self.policy.is_lora and self.engine is None else None
        stats.setdefault("loss/sft_nll", []).append(self.sft_backward(sft, coef))
        for k, v in self.decision_stats.items():
            stats.setdefault(k, []).append(v)
        if pg is not None:
            stats.setdefault("loss/sft_grad_ratio", []).append(self._sft_grad_ratio(pg))

    def _summary(self, stats: dict[str, list[float]], targets: Targets, samples: list[Sample], sft_coef: float,
                 timings: Timings) -> dict[str, float]:
        out = {k: max(v) if k.endswith("_max") else sum(v) / len(v) for k, v in stats.items() if v}
        out["kl/mean"] = float(masked_mean(kl_penalty(targets.old, targets.ref, "k1"), targets.mask))
        out["kl/k3_mean"] = float(masked_mean(kl_penalty(targets.old, targets.ref, "k3"), targets.mask))
        out["samples"] = len(samples)
        if sft_coef > 0:
            out["loss/sft_coef"] = sft_coef
        out.update(_advantage_stats(targets.adv, targets.mask, samples))
        out.update(timings.metrics())
        if any(math.isnan(v) for v in out.values()):
            raise FloatingPointError(f"NaN in learner stats: {out}")
        return out

    def _sft_grad_ratio(self, pg: list[torch.Tensor | None]) -> float:
        """||g_total - g_pg|| / ||g_pg|| after the SFT backward (g_pg taken before it)."""
        sq = torch.zeros(2)
        for p, g in zip(self.policy.trainable_parameters(), pg):
            if p.grad is None:
                continue
            grad = _local(p.grad)
            before = g if g is not None else torch.zeros_like(grad)
            sq += torch.stack([(grad - before).float().pow(2).sum(), before.float().pow(2).sum()]).cpu()
        if self.fsdp:  # each process holds a shard of the gradients: the norms add up over processes
            sq = self._sum(sq)
        return math.sqrt(float(sq[0])) / max(math.sqrt(float(sq[1])), 1e-12)

    def state_dict(self) -> dict[str, Any]:
        """Optimizer state keyed by parameter names and gathered (a collective under FSDP): the
        same checkpoint resumes with any number of processes."""
        return {"optimizer": optimizer_state(self.policy.model, self.optimizer, self.engine),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Optimizer moments and the scheduler's step as saved, at this config's train.lr: a resume
        with the same config continues exactly, and one with a new --set train.lr (the RL steps
        after a finished SFT warm-up, say) runs at it instead of silently at the saved rate."""
        load_optimizer_state(self.policy.model, self.optimizer, state["optimizer"], self.engine)
        self.scheduler.load_state_dict(state["scheduler"])
        sched = self.scheduler
        sched.base_lrs = [self.cfg.lr for _ in self.optimizer.param_groups]
        for g, rate in zip(self.optimizer.param_groups, sched.lr_lambdas):
            g["initial_lr"] = self.cfg.lr
            g["lr"] = self.cfg.lr * rate(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]  # what get_last_lr() logs


def _local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor (FSDP), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _advantage_stats(adv: torch.Tensor, mask: torch.Tensor, samples: list[Sample]) -> dict[str, float]:
    """Token-weighted mean and std of the advantages per role (and the defender per seed class):
    a role whose turns all get a positive mean advantage is reinforced whatever it says."""
    out = {}
    groups = {"attacker": lambda s: s.role == "attacker", "defender": lambda s: s.role == "defender",
              "defender_harmful": lambda s: s.role == "defender" and s.prompt_class == "harmful",
              "defender_benign": lambda s: s.role == "defender" and s.prompt_class == "benign"}
    for name, keep in groups.items():
        m = mask * torch.tensor([float(keep(s)) for s in samples])[:, None]
        if m.sum() == 0:
            continue
        mean = masked_mean(adv, m)
        out[f"adv/{name}_mean"] = float(mean)
        out[f"adv/{name}_std"] = float(masked_mean((adv - mean) ** 2, m).sqrt())
    return out
