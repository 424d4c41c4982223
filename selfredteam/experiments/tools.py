"""What the experiments (study, exploit, cross-play, red-teaming) call to train, load models and
judge: the real ones, or test doubles in unit tests, passed in one object so an experiment's
logic runs the same either way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from selfredteam.config import Config


@dataclass
class Tools:
    """The training function, a (spec, cfg, role) -> Policy loader, the judge and a log."""

    train: Callable[..., dict[str, Any]]
    policy: Callable[..., Any]
    """(spec, cfg, role) -> Policy: `embedded`, an HF id/dir or a run dir."""
    judge: Any
    log: Callable[[str], None] = print


def real_tools(cfg: Config, log: Callable[[str], None] = print) -> Tools:
    """The real training loop, model loading and the configured judge."""
    from selfredteam.judges import build_judge
    from selfredteam.policy.spec import policy_from_spec
    from selfredteam.rl.loop import train

    return Tools(train, policy_from_spec, build_judge(cfg.judge), log)
