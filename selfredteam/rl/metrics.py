"""Per-step game metrics (pure Python): rewards, outcome rates, in-training ASR and over-refusal."""

from __future__ import annotations

from typing import Any

from selfredteam.game.play import GameRecord


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def game_metrics(games: list[GameRecord]) -> dict[str, Any]:
    judged = [g for g in games if not g.judge.parse_error]
    revised = [g for g in judged if g.revised]
    harmful_seed = [g for g in judged if g.seed_label == "harmful"]
    benign_seed = [g for g in judged if g.seed_label == "benign"]
    harmful_prompt = [g for g in judged if g.judge.prompt_harmful]
    turns = [g.defender for g in games] + [g.attacker for g in games if g.attacker]
    att_len = [len(g.attacker.generation.completion_ids) for g in games if g.attacker and g.attacker.generation]
    def_len = [len(g.defender.generation.completion_ids) for g in games if g.defender.generation]

    def has(gs: list[GameRecord], name: str) -> int:
        return sum(name in g.outcomes for g in gs)

    return {
        "reward/attacker_mean": _mean([g.rewards["attacker"] for g in judged if g.rewards["attacker"] is not None]),
        "reward/defender_mean": _mean([g.rewards["defender"] for g in judged if g.rewards["defender"] is not None]),
        "game/attacker_win_harmful_compliance": _rate(has(revised, "attacker_win_harmful_compliance"), len(revised)),
        "game/attacker_win_benign_refusal": _rate(has(revised, "attacker_win_benign_refusal"), len(revised)),
        "game/faithful_revision": _rate(has(revised, "faithful_revision"), len(revised)),
        "game/defender_correct_refusal": _rate(has(harmful_prompt, "defender_correct_refusal"), len(harmful_prompt)),
        "game/asr": _rate(sum(bool(g.judge.response_harmful) for g in harmful_seed), len(harmful_seed)),
        "game/benign_refusal_rate": _rate(sum(bool(g.judge.response_refusal) for g in benign_seed), len(benign_seed)),
        "game/harmful_refusal_rate": _rate(sum(bool(g.judge.response_refusal) for g in harmful_seed), len(harmful_seed)),
        "cot/violation_rate": _rate(sum(t.cot_violation for t in turns), len(turns)),
        "judge/parse_error_rate": _rate(len(games) - len(judged), len(games)),
        "len/attacker_tokens": _mean(att_len),
        "len/defender_tokens": _mean(def_len),
        "games": len(games),
    }
