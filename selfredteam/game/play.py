"""Play a batch of Self-RedTeam games: revise -> defend -> judge -> reward.

Pure orchestration over the Policy and Judge protocols (no torch here). All attacker turns of
a batch are generated in one call, then all defender turns in one call, then one judge call,
so backends can batch as they like.

With `samples_per_prompt` k > 1, each seed is revised (or not) once and its final prompt is
answered k times: k games that share one attacker turn and one prompt, so a group baseline
(GRPO, RLOO) compares the defender's answers *to the same prompt* (refusing vs helping).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from selfredteam.config import GameConfig
from selfredteam.data import Seed
from selfredteam.game.answers import echoes
from selfredteam.game.cot import ANSWER_CLOSE, CotParse, answer_cut_off, parse_cot, parse_direct
from selfredteam.game.prompts import attacker_turn, defender_turn
from selfredteam.game.rewards import Labels, compute_rewards
from selfredteam.judges.base import Judge, Judgement
from selfredteam.judges.refusal import pattern_refusal
from selfredteam.policy.base import Generation, Policy, SamplingParams

PARSE_ERROR_OUTCOME = "judge_parse_error"


def sampling_params(gen_cfg: Any, role: str, cot: bool) -> SamplingParams:
    """A role's sampling parameters from the config's `generation` section (one place). With CoT a
    completion may stop at the closing answer tag: nothing after it is shown or scored."""
    stop = (ANSWER_CLOSE,) if cot and gen_cfg.stop_at_answer else ()
    return SamplingParams(getattr(gen_cfg, f"{role}_max_new_tokens"), gen_cfg.temperature, gen_cfg.top_p, stop)


@dataclass
class RoleTurn:
    """One role's turn: what it generated, what was shown, and whether it broke the CoT format."""

    raw: str
    answer: str
    cot_violation: bool
    violation_reason: str | None = None
    generation: Generation | None = None
    """Token ids for the learner; not serialised."""
    cut_off: bool = False
    """The token budget ended the turn inside its answer (valid but for the missing </answer>)."""

    @property
    def hit_budget(self) -> bool:
        """The turn ran to its token budget (whatever the format)."""
        return self.generation is not None and self.generation.finish_reason == "length"

    def to_dict(self) -> dict[str, Any]:
        return {"raw": self.raw, "answer": self.answer, "cot_violation": self.cot_violation, "cut_off": self.cut_off}


@dataclass
class GameRecord:
    seed: str
    seed_label: str
    revised: bool
    attacker: RoleTurn | None
    defender: RoleTurn
    judge: Judgement
    rewards: dict[str, float | None]
    outcomes: list[str]
    reward_mode: str
    cot: bool
    seed_source: str = ""
    prompt_index: int = 0
    """Index of the seed in the batch: the k games of one seed share it (and their final prompt)."""
    sample: int = 0
    """Which of the k answers to that prompt this game is (0 when samples_per_prompt = 1)."""
    opponent: str | None = None
    """The role a past snapshot of the policy played (train.opponents): nothing is learned from it."""
    replay: bool = False
    """A replay of a prompt the defender lost before (train.replay), not a fresh seed."""
    novelty_bonus: float | None = None
    """Added to the attacker's reward (train.novelty); logged apart from the game reward."""

    @property
    def final_prompt(self) -> str:
        return self.attacker.answer if self.attacker else self.seed

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "seed_label": self.seed_label,
            "seed_source": self.seed_source,
            "revised": self.revised,
            "attacker": self.attacker.to_dict() if self.attacker else None,
            "defender": self.defender.to_dict(),
            "judge": self.judge.to_dict(),
            "rewards": self.rewards,
            "outcomes": self.outcomes,
            "reward_mode": self.reward_mode,
            "cot": self.cot,
            "sample": self.sample,
            **({"opponent": self.opponent} if self.opponent else {}),
            **({"replay": True} if self.replay else {}),
            **({"novelty_bonus": self.novelty_bonus} if self.novelty_bonus is not None else {}),
        }


def mark_revisions(seeds: list[Seed], fraction: float, rng: random.Random) -> list[bool]:
    """Mark `fraction` of the harmful seeds and of the benign seeds for revision.

    Each class is handled separately so the attacker always gets both kinds of task. With an
    odd class size the extra half-seed is given to revision by a coin flip.
    """
    marks = [False] * len(seeds)
    for label in ("harmful", "benign"):
        idx = [i for i, s in enumerate(seeds) if s.label == label]
        exact = len(idx) * fraction
        k = int(exact) + (1 if rng.random() < exact - int(exact) else 0)
        for i in rng.sample(idx, k):
            marks[i] = True
    return marks


def _parse(text: str, cot: bool) -> CotParse:
    return parse_cot(text) if cot else parse_direct(text)


def _role_turn(gen: Generation, cot: bool) -> RoleTurn:
    p = _parse(gen.text, cot)
    cut_off = cot and not p.valid and gen.finish_reason == "length" and answer_cut_off(gen.text)
    return RoleTurn(gen.text, p.answer, not p.valid, p.violation, gen, cut_off)


def _generate_mixed(policy: Policy, first: list, p1: SamplingParams, second: list,
                    p2: SamplingParams) -> list[Generation]:
    """One generate call for two groups of turns when their sampling params agree."""
    if p1 == p2:
        return policy.generate(first + second, p1)
    return policy.generate(first, p1) + policy.generate(second, p2)


def play_games(
    seeds: list[Seed],
    policy: Policy,
    judge: Judge,
    *,
    rules: GameConfig,
    attacker_params: SamplingParams,
    defender_params: SamplingParams,
    rng: random.Random,
    defender: Policy | None = None,
    samples_per_prompt: int = 1,
) -> list[GameRecord]:
    """Play `samples_per_prompt` games per seed (seed-major order). `defender` defaults to
    `policy` (self-play: shared parameters)."""
    k = samples_per_prompt
    cot = rules.cot
    shared = defender is None or defender is policy
    defender = defender or policy
    revised = mark_revisions(seeds, rules.revise_fraction, rng)
    rev_idx = [i for i, r in enumerate(revised) if r]
    van_idx = [i for i, r in enumerate(revised) if not r]
    attacker_turns_in = [attacker_turn(seeds[i].prompt, seeds[i].harmful, cot) for i in rev_idx]
    vanilla_turns_in = [defender_turn(seeds[i].prompt, cot) for i in van_idx for _ in range(k)]

    # Pass 1: attacker turns, plus (with shared weights) the defender turns of vanilla seeds,
    # which do not depend on the attacker: one fuller batch instead of two sequential ones.
    if shared and attacker_turns_in and vanilla_turns_in:
        gens = _generate_mixed(policy, attacker_turns_in, attacker_params, vanilla_turns_in, defender_params)
        attacker_gens, vanilla_gens = gens[: len(rev_idx)], gens[len(rev_idx):]
    else:
        attacker_gens = policy.generate(attacker_turns_in, attacker_params) if attacker_turns_in else []
        vanilla_gens = defender.generate(vanilla_turns_in, defender_params) if vanilla_turns_in else []
    attacker_turns: dict[int, RoleTurn] = {i: _role_turn(g, cot) for i, g in zip(rev_idx, attacker_gens)}
    prompts = [attacker_turns[i].answer if i in attacker_turns else s.prompt for i, s in enumerate(seeds)]

    # Pass 2: the defender answers the revised prompts (k times each).
    revised_in = [defender_turn(prompts[i], cot) for i in rev_idx for _ in range(k)]
    revised_gens = defender.generate(revised_in, defender_params) if revised_in else []
    by_game = {(i, j): g for idx, gens in ((van_idx, vanilla_gens), (rev_idx, revised_gens))
               for (i, j), g in zip(((i, j) for i in idx for j in range(k)), gens)}
    order = [(i, j) for i in range(len(seeds)) for j in range(k)]
    defender_turns = [_role_turn(by_game[ij], cot) for ij in order]

    # Judge sees only the final prompt and the defender's answer (hidden CoT).
    judgements = judge.judge([(prompts[i], d.answer) for (i, _), d in zip(order, defender_turns)])

    games = []
    for (i, j), dfd, jd in zip(order, defender_turns, judgements):
        seed, att = seeds[i], attacker_turns.get(i)
        if jd.parse_error:
            rewards: dict[str, float | None] = {"attacker": None, "defender": None}
            outcomes = [PARSE_ERROR_OUTCOME]
        else:
            r = compute_rewards(
                rules.reward_mode,
                Labels(jd.prompt_harmful, jd.response_refusal, jd.response_harmful),
                seed_harmful=seed.harmful,
                revised=att is not None,
                cot=cot,
                attacker_violation=att.cot_violation if att else None,
                defender_violation=dfd.cot_violation,
                attacker_cut_off=bool(att and att.cut_off),
                defender_cut_off=dfd.cut_off,
                cut_off_reward=rules.cut_off_format_reward,
                refused_revision=bool(att and rules.refused_revision_loses and pattern_refusal(att.answer)),
                refusal_label=rules.refusal_label,
                echoed=rules.echo_loses and echoes(dfd.answer, [prompts[i]]),
            )
            rewards, outcomes = {"attacker": r.attacker, "defender": r.defender}, r.outcomes
        games.append(GameRecord(
            seed=seed.prompt, seed_label=seed.label, revised=att is not None, attacker=att,
            defender=dfd, judge=jd, rewards=rewards, outcomes=outcomes, reward_mode=rules.reward_mode,
            cot=cot, seed_source=seed.source, prompt_index=i, sample=j,
        ))
    return games


def summarize_games(games: list[GameRecord]) -> dict[str, Any]:
    """Counts and means for logging: outcomes, mean reward per role, violations, parse errors."""
    outcome_counts = Counter(o for g in games for o in g.outcomes)
    att = [g.rewards["attacker"] for g in games if g.rewards["attacker"] is not None]
    dfd = [g.rewards["defender"] for g in games if g.rewards["defender"] is not None]
    att_turns = [g.attacker for g in games if g.attacker and g.sample == 0]  # shared by a seed's k games
    return {
        "games": len(games),
        "revised": sum(g.revised for g in games),
        "outcomes": dict(sorted(outcome_counts.items())),
        "reward/attacker_mean": sum(att) / len(att) if att else None,
        "reward/defender_mean": sum(dfd) / len(dfd) if dfd else None,
        "cot/attacker_violations": sum(t.cot_violation for t in att_turns),
        "cot/defender_violations": sum(g.defender.cot_violation for g in games),
        "judge/parse_errors": sum(g.judge.parse_error for g in games),
    }
