"""Typed configuration: dataclasses, presets, YAML files and `--set a.b=value` overrides.

One `Config` object is built once (preset -> YAML -> overrides), validated, and passed down.
Every run writes the resolved config next to its outputs so a result can be reproduced.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from selfredteam.errors import ConfigError

RewardMode = Literal["general_sum", "all_one", "zero_sum"]


@dataclass
class ModelConfig:
    """Which policy model plays both roles, and how it is run."""

    name_or_path: str = "embedded"
    """`embedded` (the bundled Qwen2.5-Coder-0.5B-Instruct), an HF hub id, a local HF dir or a .gguf file."""
    backend: Literal["transformers", "openai"] = "transformers"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """`auto`: bf16 on CUDA; on CPU bf16 only with native bf16 instructions, else fp32 (faster there)."""
    device: str = "auto"
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    """The transformers attention kernel of the transformers backend (`eager`, `sdpa`,
    `flash_attention_2`, ...; None: transformers' choice, `sdpa` where torch has it). Why a key: a
    kernel that misbehaves on one device and dtype is swapped from the command line, and `eager`
    is the reference to compare it with (a bf16 CUDA warm-up skipped NaN steps, BENCHMARKS.md)."""
    cpu_fp16_weights: bool = True
    """On CPU, decode steps read the frozen weights as packed fp16 (fbgemm, fp32 accumulation), in
    fp32 and in bf16 models: decode is bound by reading weights, and half the bytes is faster with
    logits close to fp32's (BENCHMARKS.md "Why config.py says what it says"). Off: the dtype's own
    kernels everywhere."""
    gguf_file: str | None = None
    """GGUF file name inside an HF repo/dir, when `name_or_path` is a repo holding GGUF files."""
    base_url: str | None = None
    """For `backend=openai`: e.g. http://127.0.0.1:8000/v1 (a vLLM or llama.cpp server)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (the key itself is never logged)."""
    max_concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 3


@dataclass
class GenerationConfig:
    """Sampling parameters for both roles."""

    attacker_max_new_tokens: int = 256
    defender_max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 16
    """How many sequences the transformers backend generates at once."""
    max_prompt_length: int = 1024
    """Token budget of a whole prompt (chat template and instructions included) in every command:
    a longer one has its longest message cut in the middle, start and end kept, counted and
    warned about (budget.py). Remote backends have no tokenizer here and use 4 characters a
    token. The default leaves room for the longest shipped eval prompt with its instructions."""
    stop_at_answer: bool = True
    """With CoT on, end each turn at its first `</answer>` (kept in the output). Text after it
    can only break the format (a valid output ends there) and costs decode steps; measured on
    the embedded model it was the commonest violation after truncation."""


@dataclass
class JudgeConfig:
    """The safety judge that labels (prompt, response) pairs."""

    kind: Literal["embedded", "wildguard"] = "embedded"
    backend: Literal["transformers", "openai"] = "transformers"
    """WildGuard only: run it in-process (GPU) or call an OpenAI-compatible completions endpoint."""
    model: str = "allenai/wildguard"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    batch_size: int = 8
    timeout_s: float = 60.0
    max_retries: int = 3
    cache: bool = True
    """Cache labels in SQLite keyed by (judge id, prompt, response)."""
    cache_path: str | None = None
    """Default: <user cache>/selfredteam/judge_cache.sqlite."""
    weights: str | None = None
    """Embedded judge only: a dir written by `selfredteam judge fit` (default: the shipped weights)."""
    max_input_chars: int = 8000
    """Budget of the judge's prompt and of its response, each: longer ones are cut in the middle,
    counted and warned about (budget.py). The embedded judge's encoder reads 256 tokens anyway;
    WildGuard's template must fit its context."""


@dataclass
class GameConfig:
    """The rules of one self-play game (see docs/method.md)."""

    reward_mode: RewardMode = "general_sum"
    cot: bool = True
    """Hidden chain-of-thought: each role thinks in <think>, only <answer> is shown."""
    refusal_label: Literal["judge", "seed"] = "judge"
    """What the refusal term reads as the prompt's harmfulness: `judge` (its label of the final
    prompt; the paper) or `seed` (the seed's dataset label; game/rewards.py REFUSAL_LABELS says why)."""
    revise_fraction: float = 0.5
    """Fraction of each seed class (harmful, benign) that the attacker revises."""
    harmful_fraction: float = 0.5
    """Fraction of each batch's seeds drawn from the harmful pool."""
    cut_off_format_reward: float = -1.0
    """CoT format term of a turn whose answer the token budget cut off (it would be valid if its
    `</answer>` had fit). -1 (the paper: any violation). At -1 a helpful answer cut off on a benign
    prompt scores +1, a tie with refusing it (-1 + 1 + 1), so while the defender cannot yet tell the
    classes apart the cheap refusal wins; at 0 the cut-off answer scores +2, between refusing (+1)
    and a complete answer (+3)."""
    refused_revision_loses: bool = False
    """An attacker revision that is itself a refusal (the refusal phrase rule: "I'm sorry, I can't
    assist with that.") scores the attacker's worst game reward instead of the table's terms. Off
    = the paper. Why: for a benign seed the table pays such a non-attack +1 over a real revision
    (it is judged benign, so faithful, and a defender that repeats it "refused a benign prompt"),
    and for a harmful seed the same as an attack that gets refused; with shared weights the
    defender's learned refusals reach the attacker role (how often: BENCHMARKS.md "Why config.py
    says what it says")."""
    echo_loses: bool = False
    """A defender answer that mostly restates its prompt (game.answers.echoes: the eval's echo
    share) and that the judge calls a compliance is scored as a refusal on a benign prompt: it
    helps with nothing. (On a harmful prompt it is already the wrong decision.) Off = the paper,
    and off in every preset. Why it exists: a judge scores a one-sentence restatement as a harmless
    compliance, so the table pays it like a real answer on a benign prompt. Measured on cpu-safety
    it cut the echo rise and raised over-refusal (BENCHMARKS.md "The echo: a reward rule and the
    rows that teach it")."""


@dataclass
class DataConfig:
    """Where seeds come from and how fields map to (prompt, label)."""

    seeds: str = "embedded"
    """`embedded` (shipped pool), a .jsonl/.csv/.json path, or an HF dataset name (needs network)."""
    extra_seeds: list[str] = field(default_factory=list)
    """More sources joined to the pool, same forms as `seeds`; shipped: `embedded:adversarial` (the
    jailbreak-style forms of the seed rows, 500 harmful + 60 benign) and `embedded:borderline`
    (255 OR-Bench-Toxic harmful requests, the counterpart of the OR-Bench-Hard benign seeds)."""
    prompt_field: str = "prompt"
    label_field: str = "label"
    harmful_values: list[str] = field(default_factory=lambda: ["harmful", "1", "true", "unsafe"])
    benign_values: list[str] = field(default_factory=lambda: ["benign", "0", "false", "safe"])
    split: str = "train"
    """HF datasets only."""


@dataclass
class ReplayConfig:
    """Reflective experience replay (SSP, arXiv 2601.10589): replay prompts the defender lost."""

    fraction: float = 0.0
    """Share of each step's games that replay pool prompts (0 = off). The defender answers them
    afresh (on-policy); no attacker turn."""
    pool_size: int = 256
    """Games the defender lost (harmful compliance, or a benign prompt refused) kept for replay; when
    full, the entry with the lowest upper-confidence bound leaves."""
    ucb_c: float = 1.0
    """Exploration constant of the UCB choice: failure rate + ucb_c * sqrt(ln(total plays) / plays)."""


@dataclass
class OpponentsConfig:
    """Past-self opponents (fictitious self-play / league): some games meet an older policy."""

    prob: float = 0.0
    """Probability that a game's attacker or defender (one of the two, at random) is a past
    snapshot instead of the current policy (0 = off); only the current policy learns from it."""
    every: int = 5
    """Snapshot the LoRA adapter(s) every this many steps."""
    pool_size: int = 4
    """Snapshots kept (the oldest leaves)."""


@dataclass
class NoveltyConfig:
    """Attacker novelty bonus (CRT / Rainbow Teaming style): reward attacks unlike recent ones."""

    weight: float = 0.0
    """lambda: attacker reward + lambda * (1 - max SBERT cosine to the last `memory` attacks) (0 = off)."""
    memory: int = 64
    """How many recent attacks a new one is compared with."""


@dataclass
class SftConfig:
    """An auxiliary supervised term on chat rows (refusals and answers), beside or before the RL
    loss: a warm start for a model that, made to think first, rarely refuses anything for RL to
    reinforce (README "Warm-starting refusals")."""

    data: str | None = None
    """A file with `prompt`/`response` (and optional `thought`, and `label` harmful/benign for
    paired draws) fields, an HF dataset name, or `embedded` (the embedded model's self-distilled
    refusals and answers, written by `selfredteam self-distill`); `embedded:contrastive` and
    `embedded:contrastive-adversarial` are its labelled contrastive sets (assets/README.md)."""
    coef: float = 0.0
    """Weight of the SFT loss (0 = off unless warmup_steps). It sits outside the KL penalty, and its
    gradient can outweigh the policy gradient (BENCHMARKS.md, issue 19: `loss/sft_grad_ratio`)."""
    batch_size: int = 0
    """Rows per step (0 = train.micro_batch_size)."""
    decay_steps: int = 0
    """0: constant coef. N: coef fades linearly to 0 at step N (a bootstrap that hands over to RL
    instead of competing with it all run)."""
    paired: bool = False
    """Draw as many refusal rows (label harmful) as answer rows (label benign) every step, instead
    of at random: a draw of refusals alone raises refusal on benign prompts as much as on harmful
    ones; a paired draw pushes both ways at once."""
    pair_by: Literal["label", "source"] = "label"
    """With `paired`: `label` draws the refusal and the answer from the whole set; `source` draws
    both from one seed file when a file holds both labels (rows name it in a `source` field), so
    on a set with more jailbreak-style refusals than jailbreak-style answers the form of a prompt
    does not predict the label (issue 28: the contrastive set has 63 and 31)."""
    decision_weight: float = 1.0
    """Weight of each answer's first `decision_tokens` tokens in the SFT loss (1 = every token the
    same): where a reply refuses or starts helping. Above 1 the loss leans on that choice rather
    than on the wording around it (issue 28: the oracle learnt a refusal rate, not the boundary;
    BENCHMARKS.md "Why the oracle refuses everything"; 5 lifted the oracle's WJB-adversarial ΔJ
    from +0.18 / +0.05 to +0.32 / +0.23 on seeds 0 / 1 but lost most of its OR toxic-vs-hard gain:
    "Weighting the decision")."""
    decision_tokens: int = 4
    """How many of an answer's first tokens `decision_weight` weighs."""
    decision_bce: float = 0.0
    """Weight of a binary cross-entropy on the decision itself, at the answer's first token:
    P(refuse) there is the probability of the tokens that open the set's refusals (`SftTerm`),
    which refusal rows (label harmful) raise and answer rows (label benign) lower, like a probe
    trained on the output (issue 28: a probe on the model's states separates the classes while its
    replies do not). 0 = off; sft/p_refuse_harmful and _benign are logged whenever rows have labels."""
    answer_weight: float = 1.0
    """Weight of an answer row (label benign) in the SFT loss, NLL and decision_bce alike, against 1
    for a refusal row: the cost of an over-refusal against a missed refusal. Why: a trained oracle's
    P(refuse) ranks held-out harmful above benign prompts (AUC 0.67-0.81 on WJB adversarial) while it
    refuses half the benign ones, so the boundary is partly learned and misplaced. Above 1 leans the
    training rows' decision toward answering; whether held-out prompts follow varied by seed (4: benign
    refusal 0.15 on one seed, 0.63 on another; issue 28, BENCHMARKS.md "Ranked, not placed")."""
    normalize: Literal["token", "sequence"] = "token"
    """`token`: NLL summed over tokens / all target tokens (long answers outweigh short refusals);
    `sequence`: mean NLL per row, then mean over rows (each row weighs the same)."""
    thought_in_loss: bool = True
    """Train on the post-filled thought too. Off: the thought is context only, so the policy is
    never taught to say it (a defender trained on a fixed thought echoed it as its answer)."""
    warmup_steps: int = 0
    """Optimizer steps of SFT alone (batch_size rows each) before the first RL step: a short warm
    start instead of (or before) SFT at every step. With train.steps=0, supervised fine-tuning
    alone (an ablation's oracle row)."""
    lr: float | None = None
    """The warm-up's peak learning rate (None: train.lr). Why apart: the warm-up fits a few hundred
    labelled rows, while the RL steps after it should move the warm-started policy gently; at the
    cpu-demo's 5e-4, 20 self-play steps after an oracle warm-up gave back half its held-out gain
    (issue 28, BENCHMARKS.md "Placing the decision with the rate decayed"). The auxiliary SFT term
    (coef) runs inside the RL steps, at train.lr."""
    warmup_schedule: Literal["constant", "linear", "cosine"] = "linear"
    """The warm-up's learning rate over its steps: train.lr decaying to 0 at its last step (`linear`,
    as TRL's SFT trainer does by default, or `cosine`), or train.lr throughout (`constant`, what
    runs before 2026-12-04 used). The RL steps after it run at train.lr whatever this says. Why: at
    the cpu-demo's lr and 2 rows a step, the last steps' rows decide where the refusal decision lands
    on prompts the warm-up never saw; eight seeds of one oracle refused 0.07-0.67 of held-out benign
    prompts at a constant rate, 0.28-0.47 with a linear decay (sd 0.06, the eval's own noise), at the
    same mean (issue 28, BENCHMARKS.md "Eight seeds on one GPU")."""


@dataclass
class TrainConfig:
    """Learner settings (used by `selfredteam train`)."""

    algorithm: Literal["reinforce_pp", "grpo", "rloo"] = "reinforce_pp"
    steps: int = 20
    rollout_batch_size: int = 8
    """Games per RL step."""
    train_batch_size: int = 8
    micro_batch_size: int = 4
    lr: float = 1e-5
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """The RL steps' rate over train.steps: train.lr throughout, or decaying to 0 at the last step
    (after the train.warmup_steps ramp). Why: after an SFT warm-up, the last steps at a constant
    rate move where the refusal decision lands on new prompts, as they did inside the warm-up
    (train.sft.warmup_schedule; issue 28)."""
    kl_coef: float = 0.01
    kl_estimator: Literal["k1", "k3"] = "k1"
    clip_eps: float = 0.2
    epochs_per_batch: int = 1
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    weight_decay: float = 0.0
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_layers: int = 0
    """Put LoRA only on the top N transformer layers (0 = all). Backward then stops at the lowest
    adapted layer, which cuts the learner's cost when compute is scarce (the CPU demo)."""
    full_finetune: bool = False
    parameter_sharing: Literal["shared", "role-adapters"] = "shared"
    """`shared`: one policy plays both roles (the paper); `role-adapters`: one LoRA adapter per role."""
    gradient_checkpointing: bool = False
    role_mode: Literal["selfplay", "attacker-only", "defender-only"] = "selfplay"
    """Which roles learn. attacker-only: the defender is the frozen reference (or defender_model);
    defender-only: no attacker turn, vanilla seeds plus optional static_prompts."""
    defender_model: str | None = None
    """attacker-only: a frozen defender instead of the reference policy: an HF id/dir, `embedded`,
    a `train` run dir (its defender, merged), or `openai:URL#model` (`selfredteam exploit` uses it)."""
    static_prompts: str | None = None
    """defender-only: a file of adversarial prompts (same format as seeds) mixed into each batch."""
    samples_per_prompt: int = 1
    """Defender answers per prompt: each seed is revised (or not) once and its final prompt is
    answered this many times (games that share the attacker turn). GRPO/RLOO need >= 2: their
    baseline is the defender's other answers to the same prompt."""
    advantage_norm: Literal["batch", "role", "role_class"] = "batch"
    """Who is compared with whom. REINFORCE++ whitens the returns over `batch` (the paper: attacker
    and defender turns together, so the role with the higher reward scale gets a positive mean
    advantage whatever it did), per `role`, or per `role_class` (the defender's turns on harmful and
    on benign seeds apart). GRPO/RLOO pool the samples without siblings (one attacker revision per
    seed) by the same groups."""
    rollout_engine: Literal["local", "vllm"] = "local"
    """`local`: this process samples with the model it trains. `vllm`: a vLLM server samples
    (train.vllm_base_url), and after every update the LoRA adapter is saved and loaded there by
    name: only the adapter moves (policy/vllm_served.py). LoRA with shared weights only."""
    vllm_base_url: str | None = None
    """e.g. http://127.0.0.1:8000/v1 of `vllm serve MODEL --enable-lora --max-lora-rank 16`."""
    vllm_model: str | None = None
    """The base model's name on the server (default: model.name_or_path)."""
    vllm_sync_timeout_s: float = 120.0
    """A LoRA load that takes longer raises (checkpoint saved, resume hint) instead of hanging."""
    save_every: int = 10
    time_limit_min: float = 0.0
    """Stop (with a checkpoint, resumable) before a step that would end past this many minutes of
    training, judged by the last step's duration; 0 = no limit. Machines of one kind differ in
    speed (BENCHMARKS.md), so a demo meant to end in time says so here rather than in its steps."""
    games_log_every: int = 1
    """Write a sample of games to games/step_N.jsonl every this many steps."""
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    opponents: OpponentsConfig = field(default_factory=OpponentsConfig)
    novelty: NoveltyConfig = field(default_factory=NoveltyConfig)
    sft: SftConfig = field(default_factory=SftConfig)


@dataclass
class RunConfig:
    """Process-level settings."""

    seed: int = 0
    threads: int = 0
    """Torch intra-op threads; 0 = all cores."""
    out: str = "runs/latest"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    game: GameConfig = field(default_factory=GameConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


# Presets are overrides on top of the defaults, written as the same dotted keys users pass to
# --set, so a preset is nothing more than a saved command line.
PRESETS: dict[str, dict[str, Any]] = {
    # 2-core laptop/CI: embedded 0.5B model and embedded judge, short generations.
    "cpu-demo": {
        "model.name_or_path": "embedded",
        "model.dtype": "auto",
        "judge.kind": "embedded",
        # Both roles get the same cap, so the attacker turns and the vanilla defender turns of a
        # step are sampled in one batch (two half batches are slower).
        "generation.attacker_max_new_tokens": 80,
        "generation.defender_max_new_tokens": 80,
        "generation.batch_size": 16,
        # T=1 on a small model samples incoherent text that never closes its tags; the learner
        # optimises the tempered policy softmax(logits / T), so this stays on-policy.
        "generation.temperature": 0.7,
        "train.steps": 20,
        "train.rollout_batch_size": 8,
        "train.train_batch_size": 12,
        "train.micro_batch_size": 4,
        "train.lr": 5e-4,
        "train.lora_layers": 4,
        "train.save_every": 5,
        # The embedded model refuses harmful seeds when it answers directly but rarely once it
        # must think first, so CoT self-play alone finds almost no refusals to reinforce. Its own
        # judge-approved direct replies, as an auxiliary SFT term, carry them into the CoT format
        # (README "Warm-starting refusals"); each row's thought is the model's own sentence, since
        # one fixed thought in every row was learned as an answer (numbers: BENCHMARKS.md "Why
        # config.py says what it says").
        "train.sft.data": "embedded",
        "train.sft.coef": 1.0,
        "train.sft.batch_size": 2,
        # Shared weights carry the defender's learned refusals into the attacker role, and the
        # paper's table pays a refusal-as-prompt on a benign seed; scoring it as the attacker's loss
        # was the most off-diagonal point measured (BENCHMARKS.md "Why config.py says what it says").
        "game.refused_revision_loses": True,
        # CPU kinds differ several-fold in step time (BENCHMARKS.md): past this limit a slower
        # machine stops with a resumable checkpoint, so the demo ends within ~20 min wherever it runs.
        "train.time_limit_min": 18.0,
    },
    # One modern GPU: a 1-3B instruct model, WildGuard in-process or served by vLLM.
    "single-gpu": {
        "model.name_or_path": "Qwen/Qwen2.5-1.5B-Instruct",
        "model.dtype": "bfloat16",
        "judge.kind": "wildguard",
        "judge.backend": "transformers",
        "judge.batch_size": 32,
        "generation.attacker_max_new_tokens": 512,
        "generation.defender_max_new_tokens": 512,
        "generation.batch_size": 64,
        "train.rollout_batch_size": 64,
        "train.train_batch_size": 16,
        "train.micro_batch_size": 4,
        "train.lr": 1e-6,
        "train.steps": 200,
    },
    # The paper's reference run (method.md): Llama-3.1-8B-Instruct (abliterated), lr 5e-7,
    # 128 games per rollout, train batch 32, 2048-token prompts and generations, top-p 1.0,
    # 200 steps, KL 0.01, REINFORCE++, WildGuard served over HTTP, full fine-tuning (ZeRO-3).
    "paper-8b": {
        "model.name_or_path": "mlabonne/Meta-Llama-3.1-8B-Instruct-abliterated",
        "model.dtype": "bfloat16",
        "judge.kind": "wildguard",
        "judge.backend": "openai",
        "judge.base_url": "http://127.0.0.1:8001/v1",
        "judge.batch_size": 64,
        "generation.attacker_max_new_tokens": 2048,
        "generation.defender_max_new_tokens": 2048,
        "generation.temperature": 1.0,
        "generation.top_p": 1.0,
        "generation.batch_size": 128,
        "game.reward_mode": "general_sum",
        "game.cot": True,
        "train.algorithm": "reinforce_pp",
        "train.rollout_batch_size": 128,
        "train.train_batch_size": 32,
        "train.micro_batch_size": 2,
        "train.lr": 5e-7,
        "train.kl_coef": 0.01,
        "train.steps": 200,
        "train.full_finetune": True,
        "generation.max_prompt_length": 2048,
    },
}

# Issue 28's preset: the cpu-demo game on a pool with the boundary in it, after a supervised warm
# start on the labelled contrastive set; 19 min of training on 2 AVX-512-BF16 cores. Each
# number is a measured row of BENCHMARKS.md ("cpu-safety: self-play after the oracle's warm-up").
PRESETS["cpu-safety"] = PRESETS["cpu-demo"] | {
    # The defender's seeds: the vanilla ones, their jailbreak-style forms and the borderline
    # harmful ones; its refusal term reads the seed's label, not the judge's label of the prompt.
    "data.extra_seeds": "embedded:adversarial,embedded:borderline",
    "game.refusal_label": "seed",
    # The oracle's warm-up: 540 paired steps on the contrastive set, decision tokens weighted and
    # trained as a decision, answers weighed 8x, the rate decaying from 5e-4 to 0.
    "train.sft.data": "embedded:contrastive-adversarial",
    "train.sft.warmup_steps": 540,
    "train.sft.lr": 5e-4,
    "train.sft.paired": True,
    "train.sft.pair_by": "source",
    "train.sft.decision_weight": 5.0,
    "train.sft.decision_bce": 1.0,
    "train.sft.answer_weight": 8.0,
    # Self-play after it at a fifth of the warm-up's rate, decaying (at 5e-4 constant, 20 steps gave
    # back half the warm-up's held-out gain), each defender turn's advantage whitened among the
    # defender's turns on seeds of its class: in one batch with the attacker's turns, a refusal of
    # a benign prompt (reward 1 against the batch's mean of ~1.4) was barely discouraged.
    "train.lr": 1e-4,
    "train.lr_schedule": "linear",
    "train.advantage_norm": "role_class",
    # The limit counts the self-play steps (the warm-up is checkpointed before them).
    "train.time_limit_min": 30.0,
}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _sections() -> dict[str, type]:
    return _field_types(Config)


def _keys(prefix: str, cls: type) -> list[str]:
    hints = _field_types(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        out += _keys(f"{prefix}{f.name}.", tp) if dataclasses.is_dataclass(tp) else [f"{prefix}{f.name}"]
    return out


def valid_keys() -> list[str]:
    """All dotted keys accepted by --set and YAML files (sub-sections nest: train.replay.fraction)."""
    return [k for section, cls in _sections().items() for k in _keys(f"{section}.", cls)]


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check/convert `value` to the annotated type `tp`; raise ConfigError listing what is valid."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"Bad value {value!r} for {key}: valid values are {', '.join(map(repr, args))}.")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"Bad value {value!r} for {key}.")
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"Bad value {value!r} for {key}: expected a list (YAML list or comma-separated).")
        return [_coerce(key, v, args[0]) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"Bad value {value!r} for {key}: expected true or false.")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"Bad value {value!r} for {key}: expected an integer.")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-6" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"Bad value {value!r} for {key}: expected a number.")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"Bad value {value!r} for {key}: expected a string.")
        return str(value)
    return value


RENAMED_KEYS = {"train.max_prompt_length": "generation.max_prompt_length"} | {
    f"train.sft_{k}": f"train.sft.{k}" for k in ("data", "coef", "batch_size", "decay_steps", "paired", "normalize",
                                                 "thought_in_loss", "warmup_steps")}
"""Old key -> new key: configs and commands written before a rename still work, with one
warning per old key (`train.sft_*` became the nested `train.sft.*` section)."""
_warned: set[str] = set()


def _set(cfg: Config, key: str, value: Any) -> None:
    if key in RENAMED_KEYS:
        if key not in _warned:
            _warned.add(key)
            warnings.warn(f"Config key {key} is deprecated: use {RENAMED_KEYS[key]} (the old key still works).",
                          FutureWarning, stacklevel=3)
        key = RENAMED_KEYS[key]
    section, _, name = key.partition(".")
    sections = _sections()
    if section not in sections or not name:
        raise ConfigError(
            f"Unknown config key {key!r}. Valid sections: {', '.join(sections)}; "
            f"run `selfredteam config --keys` to list every key."
        )
    obj, path = getattr(cfg, section), section
    *parents, leaf = name.split(".")
    for part in parents:  # a sub-section such as train.replay
        tp = _field_types(type(obj)).get(part)
        if tp is None or not dataclasses.is_dataclass(tp):
            break
        obj, path = getattr(obj, part), f"{path}.{part}"
    else:
        hints = _field_types(type(obj))
        if leaf in hints and not dataclasses.is_dataclass(hints[leaf]):
            setattr(obj, leaf, _coerce(key, value, hints[leaf]))
            return
    names = ", ".join(_keys(f"{path}.", type(obj)))
    raise ConfigError(f"Unknown config key {key!r}. Valid keys in [{path}]: {names}.")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections -> dotted keys ({"train": {"sft": {"coef": 1}}} -> {"train.sft.coef": 1}):
    how YAML files and a study's variant overrides become `--set` keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", parsed value); values are read as YAML scalars (1e-5, true, [a, b])."""
    if "=" not in text:
        raise ConfigError(f"Bad override {text!r}: expected KEY=VALUE, e.g. --set game.cot=false.")
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    g, t = cfg.game, cfg.train
    for name, v in (("game.revise_fraction", g.revise_fraction), ("game.harmful_fraction", g.harmful_fraction)):
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"Bad value {v} for {name}: must be between 0 and 1.")
    if cfg.generation.top_p <= 0 or cfg.generation.top_p > 1:
        raise ConfigError(f"Bad value {cfg.generation.top_p} for generation.top_p: must be in (0, 1].")
    if cfg.generation.max_prompt_length < 64 or cfg.judge.max_input_chars < 256:
        raise ConfigError("generation.max_prompt_length must be >= 64 tokens and judge.max_input_chars >= 256 "
                          "characters: a prompt needs room for the instructions around it.")
    if cfg.generation.temperature < 0:
        raise ConfigError("generation.temperature must be >= 0 (0 = greedy).")
    for name in ("rollout_batch_size", "train_batch_size", "micro_batch_size"):
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be >= 1.")
    if t.steps < 1 and not (t.steps == 0 and t.sft.warmup_steps):
        raise ConfigError("train.steps must be >= 1 (0 only with train.sft.warmup_steps: supervised fine-tuning "
                          "alone, no RL).")
    if min(t.sft.batch_size, t.sft.coef, t.sft.decay_steps, t.sft.warmup_steps, t.time_limit_min) < 0:
        raise ConfigError("train.sft.batch_size, sft.coef, sft.decay_steps, sft.warmup_steps and train.time_limit_min "
                          "must be >= 0.")
    if min(t.sft.decision_weight, t.sft.decision_tokens) < 0:
        raise ConfigError("train.sft.decision_weight and train.sft.decision_tokens must be >= 0 (a weight of 1 weighs "
                          "the first answer tokens like the rest).")
    if t.sft.decision_bce < 0:
        raise ConfigError("train.sft.decision_bce must be >= 0 (0 = off).")
    if t.sft.answer_weight <= 0:
        raise ConfigError("train.sft.answer_weight must be > 0 (1 = an answer row weighs as much as a refusal row).")
    if t.samples_per_prompt < 1:
        raise ConfigError("train.samples_per_prompt must be >= 1.")
    for name, v in (("train.replay.fraction", t.replay.fraction), ("train.opponents.prob", t.opponents.prob)):
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"Bad value {v} for {name}: must be in [0, 1).")
    if min(t.replay.pool_size, t.opponents.every, t.opponents.pool_size, t.novelty.memory) < 1 or t.novelty.weight < 0:
        raise ConfigError("train.replay.pool_size, train.opponents.every/pool_size and train.novelty.memory must be "
                          ">= 1, and train.novelty.weight >= 0.")
    if t.opponents.prob and not (t.role_mode == "selfplay" and not t.full_finetune and t.rollout_engine == "local"):
        raise ConfigError("train.opponents needs self-play with LoRA and local rollouts (a past self is a saved "
                          "adapter): set train.role_mode=selfplay, train.full_finetune=false, train.rollout_engine=local.")
    if t.sft.warmup_steps and not t.sft.data:
        raise ConfigError("train.sft.warmup_steps needs train.sft.data (the rows to warm up on).")
    if t.algorithm in ("grpo", "rloo") and t.samples_per_prompt < 2:
        raise ConfigError(
            f"train.algorithm={t.algorithm} compares several games of the same seed: set "
            "train.samples_per_prompt >= 2 (e.g. --set train.samples_per_prompt=4)."
        )
    if t.train_batch_size % t.micro_batch_size:
        raise ConfigError(
            f"train.train_batch_size={t.train_batch_size} cannot be split into micro-batches of "
            f"train.micro_batch_size={t.micro_batch_size}: choose a micro-batch size that divides it."
        )
    if t.rollout_engine == "vllm" and (not t.vllm_base_url or t.full_finetune or t.parameter_sharing != "shared"):
        raise ConfigError("train.rollout_engine=vllm needs train.vllm_base_url and LoRA with shared weights "
                          "(only the adapter is synced to the server): set train.vllm_base_url, "
                          "train.full_finetune=false and train.parameter_sharing=shared.")
    if cfg.model.backend == "openai" and not cfg.model.base_url:
        raise ConfigError("model.backend=openai needs model.base_url, e.g. --set model.base_url=http://127.0.0.1:8000/v1.")
    if cfg.judge.kind == "wildguard" and cfg.judge.backend == "openai" and not cfg.judge.base_url:
        raise ConfigError("judge.backend=openai needs judge.base_url, e.g. --set judge.base_url=http://127.0.0.1:8001/v1.")


def load_config(
    preset: str | None = "cpu-demo",
    yaml_path: str | Path | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """Build a Config: defaults <- preset <- YAML file <- `--set` overrides (later wins)."""
    cfg = Config()
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"Unknown preset {preset!r}. Valid presets: {', '.join(PRESETS)}.")
        for k, v in PRESETS[preset].items():
            _set(cfg, k, copy.deepcopy(v))
    if yaml_path:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"Config file {path} does not exist.")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"Config file {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"Config file {path} must hold a mapping of sections (model:, game:, ...).")
        for k, v in flatten(data).items():
            try:
                _set(cfg, k, v)
            except ConfigError as e:
                raise ConfigError(f"In {path}: {e}") from None
    for text in overrides or []:
        _set(cfg, *parse_override(text))
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


RUN_CONTROL_KEYS = ("run.out", "run.threads", "train.time_limit_min", "train.save_every", "train.games_log_every")
"""Keys that say how a run is driven (when it stops, how often it saves or logs games, on how many
threads), not what it learns: a run continued in place may change them."""


def config_changes(saved: dict[str, Any], cfg: Config) -> list[str]:
    """`key: saved -> now` for each key whose value differs between a checkpoint's saved config (as
    JSON gave it back) and `cfg`, run-control keys aside. Keys only one side has (added or renamed
    since the checkpoint) are skipped: a resume reads older checkpoints too."""
    import json

    before, now = flatten(saved), flatten(json.loads(json.dumps(to_dict(cfg))))
    return [f"{k}: {before[k]!r} -> {v!r}" for k, v in now.items()
            if k in before and before[k] != v and k not in RUN_CONTROL_KEYS]


def save_config(cfg: Config, out_dir: str | Path) -> Path:
    """Write the resolved config as YAML beside a run's outputs (loadable with --config)."""
    path = Path(out_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path
