"""Judge backends behind one protocol (see `base.Judge`); `build_judge` picks one from config."""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfredteam.judges.base import PARSE_ERROR, ClippedJudge, Judge, Judgement

if TYPE_CHECKING:
    from selfredteam.config import JudgeConfig

__all__ = ["PARSE_ERROR", "ClippedJudge", "Judge", "Judgement", "build_judge"]


def _wildguard(cfg: JudgeConfig) -> Judge:
    from selfredteam.judges.wildguard import WildGuardHTTP, WildGuardLocal

    return (WildGuardHTTP if cfg.backend == "openai" else WildGuardLocal).from_config(cfg)


def _embedded(cfg: JudgeConfig) -> Judge:
    from selfredteam.judges.embedded import EmbeddedJudge

    return EmbeddedJudge.load(cfg.weights)


JUDGES = {"wildguard": _wildguard, "embedded": _embedded}


def build_judge(cfg: JudgeConfig) -> ClippedJudge:
    """The configured judge, behind the SQLite cache (unless `judge.cache=false`), with its inputs
    cut to `judge.max_input_chars` each (budget.py)."""
    judge = JUDGES[cfg.kind](cfg)
    if cfg.cache:
        from selfredteam.fsutil import cache_dir
        from selfredteam.judges.cache import CachedJudge

        judge = CachedJudge(judge, cfg.cache_path or cache_dir() / "judge_cache.sqlite")
    return ClippedJudge(judge, cfg.max_input_chars)
