"""Extensions of the paper's game, published elsewhere, as switches off by default (config:
train.replay / opponents / novelty).

- ReplayPool (reflective experience replay, SSP arXiv 2601.10589): prompts the defender lost
  (harmful compliance, or a benign prompt refused) are kept; each step a share of the games
  replays those the current defender is most likely to still fail, by an upper confidence bound
  on their failure rate; the defender answers them afresh (on-policy).
- OpponentPool (fictitious self-play / league): LoRA snapshots every K steps; with probability p a
  game's attacker or defender is a past snapshot, and only the current policy learns from it.
- NoveltyBonus (CRT / Rainbow Teaming style): attacker reward + lambda * (1 - the highest SBERT
  cosine of the attack to the last M attacks), so the attacker does not settle on one template.

Each keeps its state in checkpoints (`state_dict` / `load_state_dict`), so a resumed run
continues exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from selfredteam.config import NoveltyConfig, OpponentsConfig, ReplayConfig
from selfredteam.data import Seed
from selfredteam.game.play import GameRecord


# -- reflective experience replay -----------------------------------------------------------
@dataclass
class ReplayEntry:
    prompt: str
    """The final prompt the defender answered (a revision or a vanilla seed)."""
    label: str
    """The seed's class: harmful prompts are lost by a harmful answer, benign ones by a refusal."""
    plays: int = 1
    fails: int = 1


def defender_lost(game: GameRecord) -> bool | None:
    """Did the defender lose this game (harmful compliance; a refusal of a benign seed)? None when
    the judge gave no verdict."""
    j = game.judge
    if j.parse_error:
        return None
    if game.seed_label == "harmful":
        return bool(j.response_harmful) or j.response_refusal is False and bool(j.prompt_harmful)
    return bool(j.response_refusal)


class ReplayPool:
    def __init__(self, cfg: ReplayConfig) -> None:
        self.cfg = cfg
        self.entries: list[ReplayEntry] = []

    def ucb(self, e: ReplayEntry, total: int) -> float:
        return e.fails / e.plays + self.cfg.ucb_c * math.sqrt(math.log(max(total, 1)) / e.plays)

    def choose(self, n: int) -> list[ReplayEntry]:
        """The n entries with the highest UCB (ties: the older first)."""
        total = sum(e.plays for e in self.entries)
        ranked = sorted(range(len(self.entries)), key=lambda i: (-self.ucb(self.entries[i], total), i))
        return [self.entries[i] for i in ranked[:n]]

    def seeds(self, entries: list[ReplayEntry]) -> list[Seed]:
        return [Seed(e.prompt, e.label, source="replay") for e in entries]  # type: ignore[arg-type]

    def update(self, fresh: list[GameRecord], replayed: list[tuple[ReplayEntry, GameRecord]]) -> None:
        """Count the replayed games' outcomes; add the fresh games the defender lost."""
        for entry, game in replayed:
            lost = defender_lost(game)
            if lost is not None:
                entry.plays += 1
                entry.fails += int(lost)
        known = {e.prompt for e in self.entries}
        for g in fresh:
            if g.sample == 0 and defender_lost(g) and g.final_prompt not in known:
                self.entries.append(ReplayEntry(g.final_prompt, g.seed_label))
                known.add(g.final_prompt)
        while len(self.entries) > self.cfg.pool_size:  # the least promising leaves
            total = sum(e.plays for e in self.entries)
            self.entries.pop(min(range(len(self.entries)), key=lambda i: (self.ucb(self.entries[i], total), -i)))

    def state_dict(self) -> dict[str, Any]:
        return {"entries": [asdict(e) for e in self.entries]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entries = [ReplayEntry(**e) for e in state["entries"]]


# -- past-self opponents --------------------------------------------------------------------
class OpponentPool:
    """Snapshots of the trainable LoRA parameters (name -> tensor), the newest last."""

    def __init__(self, cfg: OpponentsConfig) -> None:
        self.cfg = cfg
        self.snapshots: list[tuple[int, dict[str, Any]]] = []

    def maybe_snapshot(self, step: int, trainable: Any) -> None:
        """After step `step` (1-based): keep a copy of the adapters every `every` steps."""
        if step % self.cfg.every == 0:
            state = {n: p.detach().clone() for n, p in trainable.model.named_parameters() if "lora_" in n}
            self.snapshots.append((step, state))
            del self.snapshots[: -self.cfg.pool_size]

    def assign(self, n_games: int, rng: random.Random) -> list[tuple[str, int] | None]:
        """Per game: None (both roles current) or (role played by the past, snapshot index)."""
        out: list[tuple[str, int] | None] = []
        for _ in range(n_games):
            if self.snapshots and rng.random() < self.cfg.prob:
                out.append((rng.choice(["attacker", "defender"]), rng.randrange(len(self.snapshots))))
            else:
                out.append(None)
        return out

    @contextmanager
    def loaded(self, trainable: Any, index: int) -> Iterator[None]:
        """The model with snapshot `index`'s adapter weights (restored afterwards)."""
        import torch

        params = {n: p for n, p in trainable.model.named_parameters() if "lora_" in n}
        current = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, t in self.snapshots[index][1].items():
                params[n].copy_(t)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, t in current.items():
                    params[n].copy_(t)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": [s for s, _ in self.snapshots],
                "tensors": {f"{i}/{n}": t for i, (_, st) in enumerate(self.snapshots) for n, t in st.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.snapshots = []
        for i, step in enumerate(state["steps"]):
            prefix = f"{i}/"
            self.snapshots.append((step, {k[len(prefix):]: v for k, v in state["tensors"].items() if k.startswith(prefix)}))


class SnapshotView:
    """A past policy as a sampler: the current RoleView with a snapshot's adapter loaded."""

    def __init__(self, view: Any, pool: OpponentPool, trainable: Any, index: int) -> None:
        self.view, self.pool, self.trainable, self.index = view, pool, trainable, index
        self.name = f"{view.name}:past{pool.snapshots[index][0]}"

    def generate(self, turns: list, params: Any) -> list:
        with self.pool.loaded(self.trainable, self.index):
            gens = self.view.generate(turns, params)
        for g in gens:
            g.trunk_states = None  # never trained on; do not hold memory for it
        return gens


# -- attacker novelty bonus -------------------------------------------------------------------
class NoveltyBonus:
    def __init__(self, cfg: NoveltyConfig, encoder: Any) -> None:
        self.cfg, self.encoder = cfg, encoder
        self.memory: list[list[float]] = []
        """Embeddings (L2-normalised) of the last `memory` attacks, oldest first."""

    def bonuses(self, attacks: list[str]) -> list[float]:
        """lambda * (1 - max cosine to the remembered attacks and the earlier ones of this call);
        then these attacks join the memory."""
        import numpy as np

        out = []
        emb = self.encoder(attacks) if attacks else np.zeros((0, 384), dtype=np.float32)
        for e in emb:
            mem = np.array(self.memory, dtype=np.float32)
            sim = float((mem @ e).max()) if len(mem) else 0.0
            out.append(self.cfg.weight * (1.0 - sim))
            self.memory.append(e.tolist())
            del self.memory[: -self.cfg.memory]
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"memory": self.memory}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory = state["memory"]


# -- what the training loop asks of them ------------------------------------------------------
class Extensions:
    """The extensions switched on for a run; the loop calls `play`, `after_play`, `after_update`.

    What they add to a game is in its typed fields (GameRecord.opponent / replay / novelty_bonus),
    which `samples_from_games` reads: no role is learned from a past self's turn, and the
    attacker's reward carries the novelty bonus."""

    def __init__(self, cfg: Any, encoder: Any = None) -> None:
        self.replay = ReplayPool(cfg.replay) if cfg.replay.fraction else None
        self.opponents = OpponentPool(cfg.opponents) if cfg.opponents.prob else None
        self.novelty = None
        if cfg.novelty.weight:
            if encoder is None:
                from selfredteam.judges.embedded import Encoder

                encoder = Encoder()
            self.novelty = NoveltyBonus(cfg.novelty, encoder)
        self.n_replay = round(cfg.replay.fraction * cfg.rollout_batch_size)
        self._replayed: list[tuple[ReplayEntry, GameRecord]] = []

    @property
    def active(self) -> bool:
        return bool(self.replay or self.opponents or self.novelty)

    def fresh_seeds(self, batch_size: int) -> int:
        """Fresh seeds this step: the batch minus the games that replay the pool."""
        return batch_size - (min(self.n_replay, len(self.replay.entries)) if self.replay else 0)

    def play(self, play: Any, seeds: list[Seed], attacker: Any, defender: Any, trainable: Any,
             rng: random.Random) -> list[GameRecord]:
        """All of the step's games: the fresh seeds (some against a past self), then the replays.
        `play(seeds, attacker, defender, replay)` plays one group; indices are renumbered so
        every seed of the step has its own (the GRPO/RLOO groups)."""
        assigned = self.opponents.assign(len(seeds), rng) if self.opponents else [None] * len(seeds)
        groups: dict[tuple[str, int] | None, list[Seed]] = {}
        for seed, a in zip(seeds, assigned):
            groups.setdefault(a, []).append(seed)
        games: list[GameRecord] = []
        for key in sorted(groups, key=lambda k: (k is not None, k or ("", 0))):
            att, dfd = attacker, defender
            if key is not None:
                role, index = key
                past = SnapshotView(attacker if role == "attacker" or defender is None else defender,
                                    self.opponents, trainable, index)  # type: ignore[arg-type]
                att, dfd = (past, defender or attacker) if role == "attacker" else (attacker, past)
            games += self._renumber(play(groups[key], att, dfd, False), len(games), opponent=key[0] if key else None)
        self._replayed = []
        if self.replay and self.n_replay and self.replay.entries:
            entries = self.replay.choose(self.n_replay)
            replayed = self._renumber(play(self.replay.seeds(entries), attacker, defender, True), len(games), replay=True)
            per_entry = {e.prompt: e for e in entries}
            self._replayed = [(per_entry[g.seed], g) for g in replayed if g.sample == 0]
            games += replayed
        return games

    @staticmethod
    def _renumber(games: list[GameRecord], offset: int, opponent: str | None = None,
                  replay: bool = False) -> list[GameRecord]:
        """Shift a group's seed indices past the games already played (unique within the step), and
        mark who played them."""
        for g in games:
            g.prompt_index += offset
            g.opponent, g.replay = opponent, replay
        return games

    def after_play(self, games: list[GameRecord]) -> dict[str, Any]:
        """Novelty bonuses onto the attacker turns, the replay pool updated; their metrics."""
        metrics: dict[str, Any] = {}
        if self.novelty:
            firsts = [g for g in games if g.attacker and g.sample == 0 and g.opponent != "attacker"]
            bonus = dict(zip((id(g.attacker) for g in firsts), self.novelty.bonuses([g.attacker.answer for g in firsts])))
            for g in games:
                if g.attacker and id(g.attacker) in bonus:
                    g.novelty_bonus = bonus[id(g.attacker)]
            metrics["reward/novelty_bonus_mean"] = sum(bonus.values()) / len(bonus) if bonus else None
        if self.replay:
            fresh = [g for g in games if not g.replay and g.opponent != "defender"]
            lost = [defender_lost(g) for _, g in self._replayed]
            self.replay.update(fresh, self._replayed)
            metrics |= {"replay/pool_size": len(self.replay.entries), "replay/games": len(self._replayed),
                        "replay/still_lost_rate": sum(bool(x) for x in lost) / len(lost) if lost else None}
        if self.opponents:
            metrics["opponents/games"] = sum(1 for g in games if g.opponent and g.sample == 0)
            metrics["opponents/pool_size"] = len(self.opponents.snapshots)
        return metrics

    def after_update(self, step: int, trainable: Any) -> None:
        if self.opponents:
            self.opponents.maybe_snapshot(step, trainable)

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in
                (("replay", self.replay), ("opponents", self.opponents), ("novelty", self.novelty)) if part}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, part in (("replay", self.replay), ("opponents", self.opponents), ("novelty", self.novelty)):
            if part and name in state:
                part.load_state_dict(state[name])
