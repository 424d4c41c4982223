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

import math
from dataclasses import dataclass
from typing import Any

import torch

from selfredteam.config import TrainConfig
from selfredteam.rl.advantages import (
    KL_IN_REWARD,
    compute_advantages,
    kl_penalty,
    masked_mean,
    policy_loss,
)
from selfredteam.rl.logprobs import PackedBatch, pack, response_logprobs
from selfredteam.rl.model import TrainablePolicy


@dataclass
class Sample:
    """One trainable turn: a role's prompt, its sampled response and the game reward."""

    role: str
    prompt_ids: list[int]
    response_ids: list[int]
    reward: float
    group: int = 0
    """Games of the same seed share a group (GRPO/RLOO baselines)."""
    old_logprobs: list[float] | None = None


def warmup_lambda(warmup_steps: int):
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


class Learner:
    def __init__(self, policy: TrainablePolicy, cfg: TrainConfig) -> None:
        self.policy = policy
        self.cfg = cfg
        self.pad_id = policy.tokenizer.pad_token_id
        self.optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_lambda(cfg.warmup_steps))

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
        return pack([samples[i].prompt_ids for i in idx], [samples[i].response_ids for i in idx], self.pad_id)

    @torch.no_grad()
    def _score(self, samples: list[Sample], use_reference: bool) -> list[torch.Tensor]:
        """Log-probs of each sample's response under the reference (or current) policy."""
        out: list[torch.Tensor | None] = [None] * len(samples)
        for mb in self._micro_batches(list(range(len(samples))), samples):
            batch = self._pack(samples, mb)
            with self.policy.role(samples[mb[0]].role):
                if use_reference:
                    with self.policy.reference() as ref:
                        lp, _ = response_logprobs(ref, batch)
                else:
                    lp, _ = response_logprobs(self.policy.model, batch)
            for row, i in enumerate(mb):
                out[i] = lp[row, : len(samples[i].response_ids)].cpu()
        return [t for t in out if t is not None]

    # -- the update -----------------------------------------------------------------------
    def update(self, samples: list[Sample]) -> dict[str, float]:
        cfg = self.cfg
        if not samples:
            return {}
        model = self.policy.model
        model.eval()  # no dropout: log-probs must match those at sampling time
        ref_lp = self._score(samples, use_reference=True)
        if all(s.old_logprobs is not None and len(s.old_logprobs) == len(s.response_ids) for s in samples):
            old_lp = [torch.tensor(s.old_logprobs) for s in samples]
        else:
            old_lp = self._score(samples, use_reference=False)

        # Advantages over the whole rollout batch (padded to a common length).
        R = max(len(s.response_ids) for s in samples)
        mask = torch.zeros(len(samples), R)
        old = torch.zeros(len(samples), R)
        ref = torch.zeros(len(samples), R)
        for i, s in enumerate(samples):
            n = len(s.response_ids)
            mask[i, :n] = 1
            old[i, :n] = old_lp[i]
            ref[i, :n] = ref_lp[i]
        kl = kl_penalty(old, ref, cfg.kl_estimator) * mask
        rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)
        groups = torch.tensor([s.group for s in samples]) if cfg.samples_per_prompt > 1 else None
        adv = compute_advantages(cfg.algorithm, rewards, kl, mask, cfg.kl_coef, groups)
        kl_in_loss = cfg.algorithm not in KL_IN_REWARD

        stats: dict[str, list[float]] = {"loss/policy": [], "loss/grad_norm": [], "loss/clip_frac": [],
                                         "loss/entropy": []}
        order = list(range(len(samples)))
        for _ in range(cfg.epochs_per_batch):
            for start in range(0, len(order), cfg.train_batch_size):
                idx = order[start : start + cfg.train_batch_size]
                n_tokens = float(mask[idx].sum())
                self.optimizer.zero_grad(set_to_none=True)
                batch_loss = 0.0
                for mb in self._micro_batches(idx, samples):
                    batch = self._pack(samples, mb)
                    with self.policy.role(samples[mb[0]].role):
                        lp, ent = response_logprobs(model, batch, with_entropy=True)
                    w = lp.shape[1]
                    m = batch.response_mask.to(lp.device)
                    loss, info = policy_loss(lp, old[mb, :w].to(lp.device), adv[mb, :w].to(lp.device), m,
                                             cfg.clip_eps, normalizer=n_tokens)
                    if kl_in_loss:
                        k = kl_penalty(lp, ref[mb, :w].to(lp.device), "k3")
                        loss = loss + cfg.kl_coef * (k * m).sum() / n_tokens
                    loss.backward()
                    batch_loss += loss.item()
                    stats["loss/clip_frac"].append(info["clip_frac"])
                    stats["loss/entropy"].append(float(masked_mean(ent, m)))
                gn = torch.nn.utils.clip_grad_norm_(self.policy.trainable_parameters(), cfg.max_grad_norm)
                stats["loss/grad_norm"].append(float(gn))
                stats["loss/policy"].append(batch_loss)
                self.optimizer.step()
        self.scheduler.step()
        model.eval()
        out = {k: sum(v) / len(v) for k, v in stats.items() if v}
        out["kl/mean"] = float(masked_mean(kl_penalty(old, ref, "k1"), mask))
        out["kl/k3_mean"] = float(masked_mean(kl_penalty(old, ref, "k3"), mask))
        out["lr"] = self.scheduler.get_last_lr()[0]
        out["samples"] = len(samples)
        if any(math.isnan(v) for v in out.values()):
            raise FloatingPointError(f"NaN in learner stats: {out}")
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
