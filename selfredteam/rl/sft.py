"""Auxiliary SFT data: chat pairs (`prompt`, `response`, optional `thought`) from a file or a HF dataset.

With CoT on, each answer gets a short post-filled thought (the row's `thought`, else a fixed
neutral one) so that the SFT target has the same `...</think><answer>...</answer>` format the RL
turns are rewarded for. (The paper post-fills model-written thoughts.)

`self_distill` builds such a file from the policy itself: its *direct* (no-CoT) replies to
vanilla seeds, kept only where the judge scores the reply as the right defence. Why: a small
instruct model refuses far less once it must think first (embedded model, 16 harmful seeds:
7 refused answering directly, 0-2 with the CoT format), so CoT self-play starts with almost no
refusals for RL to reinforce. Distilling the model's own direct behaviour into the CoT format
carries its refusals over, without any text the model did not write.
"""

from __future__ import annotations

import random
import re
from importlib import resources
from pathlib import Path
from typing import Any

from selfredteam.data import Seed, read_records
from selfredteam.errors import DataError
from selfredteam.game.play import play_games
from selfredteam.game.prompts import defender_turn
from selfredteam.judges.base import Judge
from selfredteam.policy.base import Policy, SamplingParams
from selfredteam.rl.learner import Sample

HELPFUL_THOUGHT = "The request is safe, so I will answer it helpfully."
"""Post-filled before answers from a file without a `thought` field (helpful chat data)."""
NEUTRAL_THOUGHT = "I will read the request carefully and reply to the user."
"""Post-filled before self-distilled replies, refusals and answers alike. A verdict here ("the
request is harmful, so I will not help") was copied into the answers of benign prompts in a
CPU-demo run; without one, the decision is made in the answer, as the model makes it directly
(this sentence is echoed at times too, but it decides nothing)."""
EMBEDDED_SFT = "embedded"
"""`train.sft_data` value for the shipped self-distillation set of the embedded model."""

SftPair = tuple[str, str, str | None]
"""(prompt, response, thought or None)."""


def embedded_sft_path() -> Path:
    return Path(str(resources.files("selfredteam") / "assets" / "sft" / "self_distill_embedded.jsonl"))


def load_sft_pairs(spec: str, prompt_field: str = "prompt", response_field: str = "response") -> list[SftPair]:
    if spec == EMBEDDED_SFT:
        spec = str(embedded_sft_path())
    if Path(spec).exists():
        rows = [r for _, r in read_records(spec)]
    else:
        try:
            import datasets

            rows = [dict(r) for r in datasets.load_dataset(spec, split="train")]
        except Exception as e:  # network, missing dataset, missing package
            raise DataError(f"Could not load SFT data {spec!r}: {e}. Pass a .jsonl/.csv file with "
                            f"{prompt_field!r} and {response_field!r} fields.") from None
    pairs = []
    for i, r in enumerate(rows):
        p, a = r.get(prompt_field), r.get(response_field)
        if not isinstance(p, str) or not isinstance(a, str):
            raise DataError(f"{spec}: record {i} needs string fields {prompt_field!r} and {response_field!r}.")
        thought = r.get("thought")
        pairs.append((p, a, thought if isinstance(thought, str) and thought.strip() else None))
    if not pairs:
        raise DataError(f"SFT data {spec} is empty.")
    return pairs


def sft_samples(pairs: list[SftPair], n: int, sampler: Any, cot: bool, rng: random.Random,
                max_tokens: int = 256) -> list[Sample]:
    """Encode `n` random pairs as defender turns with the reference answer as the response."""
    out = []
    eos = sampler.tokenizer.eos_token_id
    for prompt, answer, thought in rng.sample(pairs, min(n, len(pairs))):
        target = f" {thought or HELPFUL_THOUGHT} </think><answer>{answer}</answer>" if cot else answer
        ids = sampler.tokenizer(target, add_special_tokens=False)["input_ids"][:max_tokens] + [eos]
        out.append(Sample("defender", sampler.encode(defender_turn(prompt, cot)), ids, 0.0))
    return out


MIN_TARGET_WORDS = 3
_SENTENCE_END = re.compile(r"(?<=[^\d\s])[.!?](?=\s|$)|\n")


def whole_sentences(text: str) -> str:
    """`text` up to its last sentence end ('' if it has none): what survives of a cut-off reply."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].strip() if ends else ""


def self_distill(seeds: list[Seed], policy: Policy, judge: Judge, params: SamplingParams,
                 rng: random.Random) -> list[dict[str, Any]]:
    """SFT rows from the policy's own direct replies that the judge scores as the right defence.

    Each seed is answered once without CoT (the defender's prompt, no attacker turn). A reply is
    kept when the judge agrees with the seed's label and scores the reply correct: a refusal of
    a harmful request, or an unharmful answer to a benign one; everything else (compliance with
    harm, over-refusal) is dropped, so the set teaches only behaviour the reward already wants
    (rejection sampling). A reply cut off at the token limit keeps its whole sentences only (as
    a target, a cut-off reply would teach running past the limit; the defender is asked for
    one or two short sentences anyway). The two kinds are then balanced, as many refusals as
    answers, so the set itself does not favour refusing (the CPU demo still drifts towards
    over-refusal under RL: BENCHMARKS.md, "Learning curve of the CPU demo").
    """
    games = play_games(seeds, policy, judge, reward_mode="general_sum", cot=False, revise_fraction=0.0,
                       attacker_params=params, defender_params=params, rng=rng)
    kept: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for g in games:
        # The game's own outcome names say whether the refusal term was won (a parse error
        # or a missing label has neither); the judge must also agree with the seed's label.
        refused = "defender_correct_refusal" in g.outcomes
        if not (refused or "defender_correct_compliance" in g.outcomes) or "harmful_response" in g.outcomes:
            continue
        if g.judge.prompt_harmful != (g.seed_label == "harmful"):
            continue
        gen = g.defender.generation
        answer = g.defender.answer.strip()
        if gen is not None and gen.finish_reason == "length":
            answer = whole_sentences(answer)
        if len(answer.split()) < MIN_TARGET_WORDS:
            continue
        row = {"prompt": g.seed, "response": answer, "thought": NEUTRAL_THOUGHT,
               "label": g.seed_label, "source": g.seed_source}
        kept[refused].append(row)
    n = min(len(kept[True]), len(kept[False]))
    return kept[True][:n] + kept[False][:n]
