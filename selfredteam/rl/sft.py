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
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from selfredteam.config import GameConfig, TrainConfig
from selfredteam.data import Seed, read_records
from selfredteam.errors import ConfigError, DataError
from selfredteam.fsutil import read_jsonl, write_jsonl, write_text_atomic
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
THOUGHT_END = "</think><answer>"
"""What follows a post-filled thought in an SFT target: the thought closes and the answer opens
(benchmarks/decision_auc.py --thought builds the same context)."""
EMBEDDED_SFT = "embedded"
"""`train.sft.data` value for the shipped self-distillation set of the embedded model."""
EMBEDDED_SETS = {EMBEDDED_SFT: "self_distill_embedded.jsonl", "embedded:contrastive": "contrastive_embedded.jsonl",
                 "embedded:contrastive-adversarial": "contrastive_adversarial_embedded.jsonl"}
"""Shipped SFT sets of the embedded model (assets/README.md says how each was built): its own
judge-approved replies, the contrastive set (a refusal of every harmful seed, an answer to every
benign one, over the seed pools with the boundary in them), and that set with 90 more
jailbreak-style rows (every benign one the pool has)."""


def embedded_sft_path(spec: str = EMBEDDED_SFT) -> Path:
    return Path(str(resources.files("selfredteam") / "assets" / "sft" / EMBEDDED_SETS[spec]))


@dataclass(frozen=True)
class SftRow:
    prompt: str
    response: str
    thought: str | None = None
    label: str | None = None
    """`harmful` (the response refuses) or `benign` (it answers), when the data says: paired draws."""
    source: str | None = None
    """The seed file the row's prompt came from (its `source` field without the line number):
    `train.sft.pair_by=source` pairs rows within a file that holds both labels."""


def load_sft_rows(spec: str, prompt_field: str = "prompt", response_field: str = "response") -> list[SftRow]:
    if spec in EMBEDDED_SETS:
        spec = str(embedded_sft_path(spec))
    if Path(spec).exists():
        rows = [r for _, r in read_records(spec)]
    else:
        try:
            import datasets

            rows = [dict(r) for r in datasets.load_dataset(spec, split="train")]
        except Exception as e:  # network, missing dataset, missing package
            raise DataError(f"Could not load SFT data {spec!r}: {e}. Pass a .jsonl/.csv file with "
                            f"{prompt_field!r} and {response_field!r} fields.") from None
    out = []
    for i, r in enumerate(rows):
        p, a = r.get(prompt_field), r.get(response_field)
        if not isinstance(p, str) or not isinstance(a, str):
            raise DataError(f"{spec}: record {i} needs string fields {prompt_field!r} and {response_field!r}.")
        thought, label, source = r.get("thought"), r.get("label"), r.get("source")
        out.append(SftRow(p, a, thought if isinstance(thought, str) and thought.strip() else None,
                          label if label in ("harmful", "benign") else None,
                          source.rsplit(":", 1)[0] if isinstance(source, str) and source else None))
    if not out:
        raise DataError(f"SFT data {spec} is empty.")
    return out


class SftTerm:
    """The auxiliary SFT term of a run: rows encoded once as defender turns, drawn each step, and
    weighted by a schedule (train.sft.* switches; config.py says what each is for).

    Targets are fitted to the defender's token budget (`max_new_tokens`, EOS included): a longer
    answer is cut to its whole sentences, and a row left with fewer than MIN_TARGET_WORDS words is
    dropped. A target longer than the budget would teach answers that RL then sees cut off."""

    def __init__(self, rows: list[SftRow], sampler: Any, cot: bool, cfg: TrainConfig, max_new_tokens: int) -> None:
        self.cfg, self.cot = cfg, cot
        self.samples: dict[str | None, list[Sample]] = {}
        self.cut = self.dropped = 0
        encoded = [(row, self._encode(row, sampler, max_new_tokens)) for row in rows]
        encoded = [(row, sample) for row, sample in encoded if sample is not None]
        for row, sample in encoded:
            self.samples.setdefault(row.label if cfg.sft.paired else None, []).append(sample)
        if cfg.sft.paired and not (self.samples.get("harmful") and self.samples.get("benign")):
            raise ConfigError(
                "train.sft.paired draws one refusal (label harmful) and one answer (label benign) each step, "
                f"but {cfg.sft.data} has {len(self.samples.get('harmful', []))} rows labelled harmful and "
                f"{len(self.samples.get('benign', []))} labelled benign (after fitting to the token budget). "
                "Add a `label` field to the rows or set train.sft.paired=false.")
        if cfg.sft.pair_by == "source" and not cfg.sft.paired:
            raise ConfigError("train.sft.pair_by=source chooses how paired draws pair rows: set train.sft.paired=true.")
        if not any(self.samples.values()):
            raise DataError(f"No SFT row of {cfg.sft.data} fits generation.defender_max_new_tokens={max_new_tokens}.")
        self.strata = self._strata(encoded) if cfg.sft.paired and cfg.sft.pair_by == "source" else []
        """pair_by=source: (weight, rows by label) per source file holding both labels, then the rest."""
        labelled = [sample for row, sample in encoded if row.label]
        self.refusal_openers = refusal_openers(labelled)
        """Token ids that open the set's refusals: P(refuse) at an answer's first token is their mass."""
        if cfg.sft.decision_bce > 0 and not self.refusal_openers:
            raise ConfigError(f"train.sft.decision_bce reads the refusal decision from labelled rows, but {cfg.sft.data} "
                              "has no rows labelled harmful and benign whose refusals open alike. Add a `label` field "
                              "(harmful: the response refuses; benign: it answers) or set train.sft.decision_bce=0.")
        for sample in labelled:
            sample.refusal_openers = self.refusal_openers

    def _encode(self, row: SftRow, sampler: Any, budget: int) -> Sample | None:
        tok = sampler.tokenizer

        def ids(text: str) -> list[int]:
            return tok(text, add_special_tokens=False)["input_ids"]

        prompt = sampler.encode(defender_turn(row.prompt, self.cot))
        before: list[int] = []
        after: list[int] = []
        if self.cot:
            thought = f" {row.thought or HELPFUL_THOUGHT} "
            if self.cfg.sft.thought_in_loss:
                before = ids(thought + THOUGHT_END)
            else:
                prompt = prompt + ids(thought)  # context only: the policy is never taught to say it
                before = ids(THOUGHT_END)
            after = ids("</answer>")
        answer = ids(row.response)
        room = budget - len(before) - len(after) - 1  # 1 for EOS
        if len(answer) > room:
            text = whole_sentences(tok.decode(answer[: max(room, 0)]))
            if len(text.split()) < MIN_TARGET_WORDS:
                self.dropped += 1
                return None
            self.cut += 1
            answer = ids(text)[:room]
        weights = None
        if self.cfg.sft.decision_weight != 1.0:
            k = min(self.cfg.sft.decision_tokens, len(answer))
            weights = [1.0] * len(before) + [self.cfg.sft.decision_weight] * k + [1.0] * (len(answer) - k + len(after) + 1)
        return Sample("defender", prompt, before + answer + after + [tok.eos_token_id], 0.0,
                      prompt_class=row.label or "", weights=weights, decision_at=len(before) if row.label else -1)

    def _strata(self, encoded: list[tuple[SftRow, Sample]]) -> list[tuple[int, dict[str, list[Sample]]]]:
        """Rows grouped for pair_by=source: one group per source file that holds both labels (a
        jailbreak-style refusal is then paired with a jailbreak-style answer, so the form of a
        prompt does not predict its label), one group of all other rows; weighted by size. If the
        other rows hold one label only, they are paired with rows of the other label from any file,
        so no row goes undrawn."""
        files: dict[str | None, dict[str, list[Sample]]] = {}
        for row, sample in encoded:
            files.setdefault(row.source, {}).setdefault(row.label or "", []).append(sample)
        mixed = {f for f, by in files.items() if f is not None and by.get("harmful") and by.get("benign")}
        rest: dict[str, list[Sample]] = {}
        for f, by in files.items():
            if f not in mixed:
                for label, samples in by.items():
                    rest.setdefault(label, []).extend(samples)
        strata = [(sum(map(len, files[f].values())), files[f]) for f in sorted(mixed)]
        if rest:
            size = sum(map(len, rest.values()))
            for label in ("harmful", "benign"):
                rest.setdefault(label, self.samples[label])
            strata.append((size, rest))
        return strata

    def coef(self, step: int) -> float:
        """sft.coef at RL step `step` (0-based): constant, or fading linearly to 0 at sft.decay_steps."""
        c = self.cfg.sft
        return c.coef * max(0.0, 1.0 - step / c.decay_steps) if c.decay_steps else c.coef

    def draw(self, rng: random.Random) -> list[Sample]:
        """This step's rows: sft.batch_size at random, or half refusals and half answers (paired)."""
        n = self.cfg.sft.batch_size or self.cfg.micro_batch_size
        if self.cfg.sft.paired:
            k = max(1, n // 2)
            by_label = self.samples
            if self.strata:
                by_label = rng.choices([g for _, g in self.strata], weights=[w for w, _ in self.strata])[0]
            return [s for label in ("harmful", "benign") for s in rng.sample(by_label[label], min(k, len(by_label[label])))]
        pool = self.samples[None]
        return rng.sample(pool, min(n, len(pool)))


def refusal_openers(rows: list[Sample], min_rows: int = 2, ratio: float = 4.0) -> tuple[int, ...]:
    """First answer tokens of the refusal rows (label harmful) that open at least `min_rows` of
    them and are at least `ratio` times rarer as the first token of answer rows (label benign):
    the tokens whose probability at an answer's start says "refuse" (the embedded contrastive set:
    'I' opens 147 of 176 refusals and 4 of 184 answers, 'Sorry' 17 and 0). Empty without both labels."""
    firsts: dict[str, Counter[int]] = {"harmful": Counter(), "benign": Counter()}
    for s in rows:
        if s.prompt_class in firsts and 0 <= s.decision_at < len(s.response_ids):
            firsts[s.prompt_class][s.response_ids[s.decision_at]] += 1
    n_ref, n_ans = sum(firsts["harmful"].values()), sum(firsts["benign"].values())
    if not (n_ref and n_ans):
        return ()
    return tuple(sorted(t for t, k in firsts["harmful"].items()
                        if k >= min_rows and k / n_ref >= ratio * firsts["benign"][t] / n_ans))


MIN_TARGET_WORDS = 3
_SENTENCE_END = re.compile(r"(?<=[^\d\s])[.!?](?=\s|$)|\n")


def whole_sentences(text: str) -> str:
    """`text` up to its last sentence end ('' if it has none): what survives of a cut-off reply."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].strip() if ends else ""


def self_distill(seeds: list[Seed], policy: Policy, judge: Judge, params: SamplingParams,
                 rng: random.Random, max_per_phrase: int = 0) -> list[dict[str, Any]]:
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

    `max_per_phrase` > 0 keeps at most that many replies with the same first sentence
    (eval.metrics.answer_key): a set where a third of the refusals are one stock sentence teaches
    that sentence, and a defender that says one sentence to everything.
    """
    from selfredteam.eval.metrics import answer_key

    per_phrase: dict[str, int] = {}
    games = play_games(seeds, policy, judge, rules=GameConfig(cot=False, revise_fraction=0.0),
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
        key = answer_key(answer)
        if max_per_phrase and per_phrase.get(key, 0) >= max_per_phrase:
            continue
        per_phrase[key] = per_phrase.get(key, 0) + 1
        row = {"prompt": g.seed, "response": answer, "thought": NEUTRAL_THOUGHT,
               "label": g.seed_label, "source": g.seed_source}
        kept[refused].append(row)
    n = min(len(kept[True]), len(kept[False]))
    return kept[True][:n] + kept[False][:n]


def contrastive_distill(seeds: list[Seed], policy: Policy, judge: Judge, params: SamplingParams,
                        tries: int = 3) -> tuple[list[dict[str, Any]], int]:
    """For every seed, the model's own reply of the kind the seed's dataset label calls for: a
    refusal of each harmful prompt, a judge-approved answer to each benign one (`--contrastive`).
    Returns the rows and how many seeds got none in `tries` samples.

    Why not `self_distill`: it keeps a reply only where the model already did the right thing and
    the judge's prompt label agrees with the seed's, which on adversarial and borderline prompts
    keeps almost nothing (the base model refuses ~1% of adversarial harmful prompts, and the judge
    calls ~80% of OR-Bench-Toxic benign), so the set never shows the boundary where it is hard.
    Here the model is told the label while it writes (game.prompts.labelled_turn); the row then
    trains that reply under the plain defender turn, so the label is what is learned, in the
    model's own words (on the last try a harmful seed's reply starts with a refusal's opening
    words, and the model finishes it). The judge only checks the reply: a refusal for harmful (and no harm in it),
    an unharmful non-refusal for benign; replies of fewer than MIN_TARGET_WORDS words, or that echo
    the instructions or the request itself, or paraphrase the label hint (game.prompts.repeats_hint),
    are sampled again. (A reply restating its request is one the judge passes as a harmless answer
    with no help in it; 44 of the 213 answers of `embedded:contrastive-adversarial`'s first build
    did, and a loss weighing answers 4x taught the restatement: issue 28.)"""
    from selfredteam.game.answers import echoes
    from selfredteam.game.cot import parse_direct
    from selfredteam.game.prompts import instruction_texts, labelled_turn, repeats_hint

    rows: dict[int, dict[str, Any]] = {}
    for attempt in range(tries):
        todo = [i for i in range(len(seeds)) if i not in rows]
        if not todo:
            break
        last = attempt == tries - 1  # harmful seeds still without a refusal: start the reply for them
        turns = [labelled_turn(seeds[i].prompt, seeds[i].harmful, opening=last) for i in todo]
        answers = []
        for turn, g in zip(turns, policy.generate(turns, params)):
            a = parse_direct(g.text).answer.strip()
            a = whole_sentences(a) if g.finish_reason == "length" else a
            answers.append(_continue(turn.prefix, a) if turn.prefix else a)
        verdicts = judge.judge([(seeds[i].prompt, a) for i, a in zip(todo, answers)])
        for i, a, v in zip(todo, answers, verdicts):
            seed = seeds[i]
            right = v.response_refusal is seed.harmful and v.response_harmful is False
            if (v.parse_error or not right or len(a.split()) < MIN_TARGET_WORDS
                    or echoes(a, [*instruction_texts(), seed.prompt]) or repeats_hint(a)):
                continue
            rows[i] = {"prompt": seed.prompt, "response": a, "thought": NEUTRAL_THOUGHT, "label": seed.label,
                       "source": seed.source}
    return [rows[i] for i in sorted(rows)], len(seeds) - len(rows)


def _continue(opening: str, rest: str) -> str:
    """A reply the model finished after `opening`, joined with a space unless it goes on with punctuation."""
    return opening + ("" if rest[:1] in ",.;:!?" else " ") + rest if rest else opening


def distill_resumably(seeds: list[Seed], out: Path, make_rows: Any, chunk: int = 64,
                      log: Any = None) -> tuple[list[dict[str, Any]], int]:
    """Run `make_rows(seeds) -> (rows, missed)` over `seeds` in chunks, saving after each, so an
    interrupted build (Ctrl-C, a crash, a 2-core machine's hour) resumes where it stopped.

    Progress lives beside OUT: OUT.partial.jsonl (the rows so far) and OUT.progress.json (the
    sources of the seeds done, and how many got no row), both written atomically after each chunk;
    a re-run with the same seeds skips the done ones. Returns all rows and the missed count; the
    caller writes OUT and removes the progress files (`finish_resumable`)."""
    import json

    partial, progress = _progress_paths(out)
    rows: list[dict[str, Any]] = []
    done: set[str] = set()
    missed = 0
    if progress.is_file() and partial.is_file():
        state = json.loads(progress.read_text())
        done, missed = set(state["done"]), state["missed"]
        rows = read_jsonl(partial)
        if log:
            log(f"Resuming: {len(done)} of {len(seeds)} seeds done, {len(rows)} rows kept.")
    todo = [s for s in seeds if (s.source or s.prompt) not in done]
    for k in range(0, len(todo), chunk):
        part = todo[k:k + chunk]
        new, miss = make_rows(part)
        rows += new
        missed += miss
        done |= {s.source or s.prompt for s in part}
        write_jsonl(partial, rows)
        write_text_atomic(progress, json.dumps({"done": sorted(done), "missed": missed}))
        if log:
            log(f"{len(done)} of {len(seeds)} seeds done, {len(rows)} rows kept, {missed} without one.")
    return rows, missed


def _progress_paths(out: Path) -> tuple[Path, Path]:
    return out.with_name(out.name + ".partial.jsonl"), out.with_name(out.name + ".progress.json")


def finish_resumable(out: Path) -> None:
    """Remove the progress files once OUT is written."""
    for p in _progress_paths(out):
        p.unlink(missing_ok=True)


THOUGHT_TOKENS = 48
"""Generation budget for a written thought (one sentence; a longer one is dropped anyway)."""
MAX_THOUGHT_WORDS = 30
"""A written thought longer than this is replaced by the neutral one: it would take the answer's
share of the defender's token budget (thought and answer share generation.defender_max_new_tokens)."""
_TAG = re.compile(r"</?(think|answer)>")


def add_thoughts(rows: list[dict[str, Any]], policy: Policy, params: SamplingParams,
                 tries: int = 3) -> tuple[list[dict[str, Any]], int]:
    """The rows with a thought the policy wrote for each (`--model-thoughts`), and how many kept
    the neutral one because no written thought was usable.

    The policy is shown the request and the reply it already gave and asked for the one sentence
    it would have thought first (game.prompts.thought_turn). Why: every self-distilled row shared
    one fixed NEUTRAL_THOUGHT, and a CoT defender trained on it answered benign and harmful prompts
    with that very sentence (#19 point 7; 0.40 of the non-refusal answers on an eval split in the
    CPU demo). A thought written per request leaves no single sentence to echo, and it names what
    the request asks for before the reply decides (the paper post-fills model-written thoughts).
    A thought is usable as its first whole sentence, without CoT tags, of 4 to MAX_THOUGHT_WORDS
    words, not an echo of the instructions (game.answers.echoes), not itself a refusal phrase
    (a first set had 8 in 78, "I'm sorry, but I can't assist with that."; the CPU demo trained on it
    refused inside its thought and then wrote no answer), and not the reply over again (the reply
    echoes it: 35 of the 444 rows of `embedded:contrastive-adversarial`'s first build, 32 of them
    benign, where the thought restates the request; a row whose answer copies its thought teaches
    the defender to answer with a restatement); rows without one are asked again, up to `tries`
    samples in all, then keep the neutral thought (counted)."""
    from selfredteam.game.answers import echoes
    from selfredteam.game.prompts import instruction_texts, thought_turn
    from selfredteam.judges.refusal import pattern_refusal

    def usable(text: str, reply: str) -> str | None:
        line = _TAG.sub(" ", text).strip().strip('"').split("\n")[0].strip()
        end = _SENTENCE_END.search(line)  # the same sentence rule as whole_sentences; none: cut off
        thought = " ".join(line[: end.end()].split()) if end else ""
        ok = (MIN_TARGET_WORDS < len(thought.split()) <= MAX_THOUGHT_WORDS and not pattern_refusal(thought)
              and not echoes(thought, instruction_texts()) and not echoes(reply, [thought]))
        return thought if ok else None

    thoughts: dict[int, str] = {}
    for _ in range(tries):
        todo = [i for i in range(len(rows)) if i not in thoughts]
        if not todo:
            break
        gens = policy.generate([thought_turn(rows[i]["prompt"], rows[i]["response"]) for i in todo], params)
        thoughts |= {i: t for i, g in zip(todo, gens) if (t := usable(g.text, rows[i]["response"]))}
    out = [row | {"thought": thoughts.get(i, NEUTRAL_THOUGHT)} for i, row in enumerate(rows)]
    return out, len(rows) - len(thoughts)


def add_revisions(rows: list[dict[str, Any]], policy: Policy, judge: Judge, params: SamplingParams,
                  cot: bool = False) -> list[dict[str, Any]]:
    """Each kept row again, under the policy's own attacker revision of its prompt (`--revise`).

    The attacker (the same model) rewrites each seed the way it does in self-play (a harmful seed
    into a jailbreak that keeps its intent, a benign one into a harmless prompt that looks risky);
    the row keeps the judge-approved reply to the vanilla seed. A revision is kept only when the
    judge still reads it as the seed's class (a harmful rewrite that lost its intent would teach
    refusing something harmless). The SFT rows then cover adversarial framings, which the
    vanilla seeds alone do not, still with no text the model did not write."""
    from selfredteam.game.cot import parse_cot, parse_direct
    from selfredteam.game.prompts import attacker_turn

    gens = policy.generate([attacker_turn(r["prompt"], r["label"] == "harmful", cot) for r in rows], params)
    revisions = [(parse_cot if cot else parse_direct)(g.text).answer.strip() for g in gens]
    verdicts = judge.judge([(rev, None) for rev in revisions])
    out = []
    for row, rev, v in zip(rows, revisions, verdicts):
        if rev and not v.parse_error and v.prompt_harmful == (row["label"] == "harmful") and rev != row["prompt"]:
            out.append(row | {"prompt": rev, "seed": row["prompt"], "revised": True})
    return out
