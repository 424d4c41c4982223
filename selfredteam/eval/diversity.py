"""Attack diversity of an attacker's prompts: from a training run's games or generated fresh.

SBERT similarity (mean off-diagonal cosine of all-MiniLM-L6-v2 embeddings; diversity = 1 -
similarity, as the paper reports it), Self-BLEU (sacrebleu), and revision faithfulness via an
NLI model when one is configured (none ships offline, so it is reported as skipped).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from selfredteam.data import Seed
from selfredteam.errors import UserError
from selfredteam.eval.metrics import sbert_similarity, self_bleu
from selfredteam.game.cot import parse_cot, parse_direct
from selfredteam.game.prompts import attacker_turn
from selfredteam.policy.base import Policy, SamplingParams


def attacks_from_run(run: Path, last_steps: int | None = None) -> list[dict[str, Any]]:
    """(seed, attack) pairs of the revised games in RUN/games/step_N.jsonl (optionally the last N steps)."""
    files = sorted((run / "games").glob("step_*.jsonl"), key=lambda p: int(p.stem.split("_")[1]))
    if not files:
        raise UserError(f"No games in {run / 'games'}: pass a `selfredteam train` run dir.")
    if last_steps:
        files = files[-last_steps:]
    out = []
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            g = json.loads(line)
            if g.get("attacker") and not g.get("sample"):  # k games of a seed share one attack
                out.append({"seed": g["seed"], "seed_label": g["seed_label"], "attack": g["attacker"]["answer"]})
    return out


def generate_attacks(policy: Policy, seeds: list[Seed], cot: bool, params: SamplingParams) -> list[dict[str, Any]]:
    """Revise each seed once with the attacker prompt: a trained attacker red-teaming on demand."""
    gens = policy.generate([attacker_turn(s.prompt, s.harmful, cot) for s in seeds], params)
    parse = parse_cot if cot else parse_direct
    return [{"seed": s.prompt, "seed_label": s.label, "attack": parse(g.text).answer,
             "cot_violation": not parse(g.text).valid} for s, g in zip(seeds, gens)]


def diversity_report(attacks: list[dict[str, Any]], max_texts: int = 500, seed: int = 0) -> dict[str, Any]:
    texts = [a["attack"] for a in attacks if a["attack"].strip()]
    if len(texts) > max_texts:  # pairwise metrics are O(n^2): subsample reproducibly
        texts = random.Random(seed).sample(texts, max_texts)
    if len(texts) < 2:
        raise UserError("Need at least 2 attacker prompts to measure diversity.")
    sim = sbert_similarity(texts)
    sb = self_bleu(texts)
    return {"n": len(texts), "sbert_similarity": sim, "sbert_diversity": 1 - sim, "self_bleu": sb,
            "self_bleu_diversity": 1 - sb,
            "faithfulness_nli": "skipped: no NLI model configured (none ships offline)"}
