"""Rates with honest uncertainty (Wilson score intervals) and attack-diversity metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    k: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float | None:
        return self.k / self.n if self.n else None

    def __str__(self) -> str:
        if not self.n:
            return "n/a"
        return f"{100 * self.k / self.n:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def wilson(k: int, n: int, z: float = 1.959963984540054) -> Rate:
    """95% Wilson score interval for k successes in n trials (well-behaved at 0, n and small n)."""
    if n == 0:
        return Rate(0, 0, 0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Rate(k, n, max(0.0, centre - half), min(1.0, centre + half))


def sbert_similarity(texts: list[str], encoder=None) -> float:
    """Mean pairwise cosine similarity of all-MiniLM-L6-v2 embeddings, diagonal excluded.

    The paper reports diversity as 1 - this value."""
    import numpy as np

    if len(texts) < 2:
        raise ValueError("need at least 2 texts for pairwise similarity")
    if encoder is None:
        from selfredteam.judges.embedded import Encoder

        encoder = Encoder()
    emb = encoder(texts)
    sim = emb @ emb.T
    n = len(texts)
    return float((sim.sum() - np.trace(sim)) / (n * (n - 1)))


def self_bleu(texts: list[str]) -> float:
    """Mean sentence-BLEU (0-1) of each text against all the others as references (sacrebleu).

    Higher = more repetitive; 1 - Self-BLEU is a lexical diversity score."""
    import sacrebleu

    if len(texts) < 2:
        raise ValueError("need at least 2 texts for Self-BLEU")
    scores = [sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1 :]).score for i, t in enumerate(texts)]
    return sum(scores) / len(scores) / 100.0
