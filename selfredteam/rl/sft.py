"""Auxiliary SFT data: helpful chat pairs (`prompt`, `response`) from a file or a HF dataset.

With CoT on, each answer gets a short post-filled thought so that the SFT target has the same
`...</think><answer>...</answer>` format the RL turns are rewarded for. (The paper post-fills
model-written thoughts; a fixed neutral thought is our simpler stand-in.)
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from selfredteam.data import read_records
from selfredteam.errors import DataError
from selfredteam.game.prompts import defender_turn
from selfredteam.rl.learner import Sample

POST_FILLED_THOUGHT = " The request is safe, so I will answer it helpfully. </think><answer>"


def load_sft_pairs(spec: str, prompt_field: str = "prompt", response_field: str = "response") -> list[tuple[str, str]]:
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
        pairs.append((p, a))
    if not pairs:
        raise DataError(f"SFT data {spec} is empty.")
    return pairs


def sft_samples(pairs: list[tuple[str, str]], n: int, sampler: Any, cot: bool, rng: random.Random,
                max_tokens: int = 256) -> list[Sample]:
    """Encode `n` random pairs as defender turns with the reference answer as the response."""
    out = []
    eos = sampler.tokenizer.eos_token_id
    for prompt, answer in rng.sample(pairs, min(n, len(pairs))):
        target = (POST_FILLED_THOUGHT + answer + "</answer>") if cot else answer
        ids = sampler.tokenizer(target, add_special_tokens=False)["input_ids"][:max_tokens] + [eos]
        out.append(Sample("defender", sampler.encode(defender_turn(prompt, cot)), ids, 0.0))
    return out
