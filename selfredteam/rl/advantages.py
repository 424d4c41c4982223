"""Advantage estimators and the clipped policy loss: the maths of the learner, on tensors only.

Shapes: a rollout batch is B sequences of response tokens, right-padded to T, with `mask` [B, T]
(1 on real response tokens). `rewards` [B] are the scalar game rewards. Estimators live in a
registry (`ESTIMATORS`); an unknown name lists the valid ones.

REINFORCE++ (Hu et al., 2025; the paper's algorithm): the per-token KL penalty
`-kl_coef * kl_t` is added to every response token and the scalar game reward to the last
one; the return is the undiscounted reward-to-go; advantages are whitened over *all tokens of
the whole rollout batch* (not per prompt), which is what makes it critic-free and stable.
GRPO and RLOO are group baselines: they need several samples of the same game prompt
(`group_ids`), and keep the KL as a separate loss term instead of folding it into the return.

Self-play puts two roles with different reward scales in one batch (attacker turns average
about -0.7, defender turns +1.1 in the CPU demo), so one whitening over the batch gives every
defender turn a positive mean advantage, whatever it said. `norm_ids` (small fixed codes, see
`N_NORM_GROUPS`: e.g. 0 attacker, 1 defender on harmful seeds, 2 defender on benign seeds)
whitens each group on its own (`train.advantage_norm`); None keeps the paper's whole batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from selfredteam.errors import ConfigError


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL(pi || ref) estimate from sampled-token log-probs.

    k1 = log pi - log ref (unbiased, can be negative); k3 = exp(ref - pi) - (ref - pi) - 1
    (unbiased and always >= 0, lower variance; Schulman's approximation).
    """
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ConfigError(f"Unknown KL estimator {estimator!r}. Valid: k1, k3.")


Reduce = Callable[[torch.Tensor], torch.Tensor]
"""Sums a tensor over data-parallel processes (identity in a single process)."""


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def masked_mean(x: torch.Tensor, mask: torch.Tensor, reduce: Reduce = _identity) -> torch.Tensor:
    return reduce((x * mask).sum()) / reduce(mask.sum()).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, reduce: Reduce = _identity) -> torch.Tensor:
    """(x - mean) / std over the masked elements of the whole batch, across all processes."""
    mean = masked_mean(x, mask, reduce)
    var = masked_mean((x - mean) ** 2, mask, reduce)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token (rows are right-padded)."""
    return mask.sum(dim=1).long().clamp(min=1) - 1


N_NORM_GROUPS = 3
"""Normalisation codes are 0 .. N_NORM_GROUPS-1 (fixed, so every data-parallel process takes part
in the same reductions, even for a group it has no sample of)."""


def whiten_by_group(x: torch.Tensor, mask: torch.Tensor, norm_ids: torch.Tensor | None,
                    reduce: Reduce = _identity) -> torch.Tensor:
    """masked_whiten over the whole batch (norm_ids None), or within each normalisation group."""
    if norm_ids is None:
        return masked_whiten(x, mask, reduce=reduce)
    out = torch.zeros_like(x)
    for code in range(N_NORM_GROUPS):
        out += masked_whiten(x, mask * (norm_ids == code).to(mask.dtype)[:, None], reduce=reduce)
    return out


def reinforce_pp(rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float,
                 group_ids: torch.Tensor | None = None, norm_ids: torch.Tensor | None = None,
                 reduce: Reduce = _identity) -> torch.Tensor:
    """REINFORCE++ advantages: KL-shaped reward-to-go, whitened over the batch (or per norm group)."""
    token_rewards = -kl_coef * kl * mask
    token_rewards[torch.arange(len(rewards)), last_token_index(mask)] += rewards
    # Reward-to-go with gamma = 1: reverse cumulative sum along time.
    returns = token_rewards.flip(1).cumsum(1).flip(1) * mask
    return whiten_by_group(returns, mask, norm_ids, reduce=reduce)


def baseline_groups(group_ids: torch.Tensor | None, norm_ids: torch.Tensor | None, name: str) -> torch.Tensor:
    """The groups a group baseline compares within: a sample's own group (several samples of one
    role for the same prompt) when it has siblings; samples without one (e.g. attacker turns, one
    revision per seed) are pooled per normalisation group, i.e. compared with the other turns of
    their role, rather than getting no signal. Group ids must be >= 0."""
    if group_ids is None:
        raise ConfigError(f"{name} needs several samples per game prompt: set train.samples_per_prompt >= 2.")
    uniq, counts = group_ids.unique(return_counts=True)
    single = torch.isin(group_ids, uniq[counts == 1])
    pooled = -1 - (norm_ids if norm_ids is not None else torch.zeros_like(group_ids))
    return torch.where(single, pooled, group_ids)


def grpo(rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float,
         group_ids: torch.Tensor | None = None, norm_ids: torch.Tensor | None = None,
         reduce: Reduce = _identity, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: (r - group mean) / group std, the same for every token of a sequence.

    Groups never straddle processes (each process plays all samples of its seeds)."""
    g = baseline_groups(group_ids, norm_ids, "grpo")
    adv = torch.empty_like(rewards)
    for gid in g.unique():
        sel = g == gid
        r = rewards[sel]
        adv[sel] = (r - r.mean()) / (r.std(unbiased=False) + eps) if sel.sum() > 1 else torch.zeros_like(r)
    return adv[:, None] * mask


def rloo(rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float,
         group_ids: torch.Tensor | None = None, norm_ids: torch.Tensor | None = None,
         reduce: Reduce = _identity) -> torch.Tensor:
    """RLOO: r minus the mean reward of the *other* samples of the same prompt."""
    g = baseline_groups(group_ids, norm_ids, "rloo")
    adv = torch.zeros_like(rewards)
    for gid in g.unique():
        sel = g == gid
        n = int(sel.sum())
        if n > 1:
            r = rewards[sel]
            adv[sel] = r - (r.sum() - r) / (n - 1)
    return adv[:, None] * mask


Estimator = Callable[..., torch.Tensor]
ESTIMATORS: dict[str, Estimator] = {"reinforce_pp": reinforce_pp, "grpo": grpo, "rloo": rloo}
KL_IN_REWARD = {"reinforce_pp"}
"""Estimators that fold the KL into the return; the others add it to the loss."""


def compute_advantages(name: str, rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                       kl_coef: float, group_ids: torch.Tensor | None = None,
                       norm_ids: torch.Tensor | None = None, reduce: Reduce = _identity) -> torch.Tensor:
    try:
        fn = ESTIMATORS[name]
    except KeyError:
        raise ConfigError(f"Unknown algorithm {name!r}. Valid: {', '.join(ESTIMATORS)}.") from None
    return fn(rewards, kl, mask, kl_coef, group_ids=group_ids, norm_ids=norm_ids, reduce=reduce)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_eps: float, normalizer: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-style clipped surrogate, summed over tokens and divided by `normalizer` tokens.

    With one epoch per batch, old_logp == logp.detach(): the ratio is 1 and this is plain
    REINFORCE; with reused batches the clip keeps updates near the sampling policy. Passing the
    token count of the whole train batch as `normalizer` makes gradient accumulation over
    micro-batches equal to one big batch.
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    per_token = -torch.min(unclipped, clipped) * mask
    denom = normalizer if normalizer is not None else float(mask.sum().clamp(min=1))
    loss = per_token.sum() / denom
    with torch.no_grad():
        dev = (ratio - 1).abs() * mask
        clipfrac = masked_mean((dev > clip_eps).float(), mask).item()
    return loss, {"clip_frac": clipfrac, "ratio_dev_max": float(dev.max()) if dev.numel() else 0.0}
