"""Judge backends behind one protocol (see `base.Judge`); `build_judge` picks one from config."""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfredteam.judges.base import PARSE_ERROR, Judge, Judgement

if TYPE_CHECKING:
    from selfredteam.config import JudgeConfig

__all__ = ["PARSE_ERROR", "Judge", "Judgement", "build_judge"]


def _wildguard(cfg: JudgeConfig) -> Judge:
    from selfredteam.judges.wildguard import WildGuardHTTP, WildGuardLocal

    return (WildGuardHTTP if cfg.backend == "openai" else WildGuardLocal).from_config(cfg)


def _embedded(cfg: JudgeConfig) -> Judge:
    from selfredteam.judges.embedded import EmbeddedJudge

    return EmbeddedJudge.load(cfg.weights)


JUDGES = {"wildguard": _wildguard, "embedded": _embedded}


def build_judge(cfg: JudgeConfig) -> Judge:
    """The configured judge, wrapped in the SQLite cache unless `judge.cache=false`."""
    judge = JUDGES[cfg.kind](cfg)
    if not cfg.cache:
        return judge
    from selfredteam.judges.cache import CachedJudge
    from selfredteam.policy.embedded import cache_dir

    return CachedJudge(judge, cfg.cache_path or cache_dir() / "judge_cache.sqlite")
