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
    attacks = [g.attacker for g in games if g.attacker and g.sample == 0]  # one per seed (k games share it)
    turns = [g.defender for g in games] + attacks
    att_len = [len(a.generation.completion_ids) for a in attacks if a.generation]
    def_len = [len(g.defender.generation.completion_ids) for g in games if g.defender.generation]

    def hit_budget(label: str) -> float | None:
        ts = [g.defender for g in games if g.seed_label == label]
        return _rate(sum(t.hit_budget for t in ts), len(ts))

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
        "cot/cut_off_rate": _rate(sum(t.cut_off for t in turns), len(turns)),
        # Turns that ran into their token budget, per role and seed class: a budget that cuts
        # helpful answers but not refusals makes refusing the cheaper way to a good reward.
        "len/attacker_hit_budget": _rate(sum(a.hit_budget for a in attacks), len(attacks)),
        "len/defender_hit_budget_harmful": hit_budget("harmful"),
        "len/defender_hit_budget_benign": hit_budget("benign"),
        "judge/parse_error_rate": _rate(len(games) - len(judged), len(games)),
        "len/attacker_tokens": _mean(att_len),
        "len/defender_tokens": _mean(def_len),
        "games": len(games),
    }
