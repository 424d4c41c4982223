"""`transformers` policy backend: local CPU/GPU generation from an HF id, a local dir or a GGUF.

GGUF files are dequantised once into a safetensors dir in the user cache (loading GGUF each
time costs ~50 s on 2 cores, the converted dir ~2 s). Other checkpoints load safetensors only.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from selfredteam.budget import CUT_MARKER, TruncationCounter, keep_ends
from selfredteam.config import ModelConfig
from selfredteam.errors import UserError
from selfredteam.fsutil import cache_dir
from selfredteam.policy.base import Generation, SamplingParams, Turn
from selfredteam.policy.cpu_fastpath import use_small_batch_linears
from selfredteam.policy.decode import decode
from selfredteam.policy.embedded import convert_gguf_to_hf, embedded_model_dir
from selfredteam.policy.prefill import PrefixCache


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU flags (/proc/cpuinfo) of native bf16 matrix instructions."""


def cpu_bf16_flags() -> list[str]:
    """The native bf16 instruction flags this CPU reports (empty without them, or off Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    words = set(flags.split())
    return [f for f in BF16_CPU_FLAGS if f in words]


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AVX512-BF16 or AMX)."""
    return bool(cpu_bf16_flags())


def choose_dtype(dtype: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The compute dtype for `device`, and why (printed at start and saved with every run).

    `auto`: bf16 on CUDA (fp16 on GPUs without bf16). On CPU, bf16 only when the CPU has native
    bf16 instructions: on a 2-core AVX2 EPYC bf16 *sampling* measured 3.4x slower than fp32 with
    fp16 weights (11.3 vs 38.5 tok/s, batch 8) and bf16 prefill 6x slower, because every bf16
    GEMM falls back to a slow path there; with AVX512-BF16 the choice was measured again
    (BENCHMARKS.md, "Rollout dtype on CPU").
    """
    if dtype != "auto":
        return getattr(torch, dtype), f"{_short(dtype)}: set by model.dtype"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "bf16: CUDA device with bf16 support"
        return torch.float16, "fp16: this CUDA device has no bf16"
    flags = cpu_bf16_flags()
    if flags:
        return torch.bfloat16, f"bf16: CPU has {'/'.join(flags)}"
    return torch.float32, "fp32: CPU has no native bf16 (avx512_bf16/amx_bf16), where bf16 runs slower"


def _short(dtype: str) -> str:
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(dtype, dtype)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`choose_dtype` without the reason."""
    return choose_dtype(dtype, device)[0]


def set_threads(threads: int) -> None:
    """One explicit thread count: oversubscribing 2 cores cut throughput 3-10x in measurements.
    Also keeps freed memory for reuse (`keep_freed_memory`): both are process-wide CPU settings."""
    torch.set_num_threads(threads if threads > 0 else (os.cpu_count() or 1))
    keep_freed_memory()


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc serve every allocation from its heap and keep freed memory (mallopt), instead of
    mapping each block over 128 KB-32 MB afresh and unmapping it when freed.

    Why: a training step allocates and frees tensors of 5-150 MB hundreds of times (logits,
    probabilities, MLP activations); each fresh mapping is zero-filled page by page on first
    touch. Profiled on the AVX2 kind, `exp` over a fresh [250, 152k] buffer took 148 ms, most of
    it page faults, and one learner update took 20-21 s instead of 22-25 s (same peak RSS).
    True when applied (Linux with glibc); elsewhere a no-op. Set SELFREDTEAM_KEEP_FREED_MEMORY=0
    to leave the allocator alone."""
    if os.environ.get("SELFREDTEAM_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: musl and others have other knobs
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def resolve_model_source(name_or_path: str, gguf_file: str | None = None) -> tuple[str, dict[str, Any]]:
    """Map the config's model spec to (path-or-id, extra from_pretrained kwargs)."""
    if name_or_path == "embedded":
        return str(embedded_model_dir()), {"use_safetensors": True}
    path = Path(name_or_path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file {path} does not exist.")
        key = hashlib.sha256(f"{path.resolve()}:{path.stat().st_size}".encode()).hexdigest()[:12]
        target = cache_dir() / "models" / f"{path.stem}-{key}"
        if not (target / "config.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            convert_gguf_to_hf(path, target)
        return str(target), {"use_safetensors": True}
    if gguf_file:
        return name_or_path, {"gguf_file": gguf_file}
    if path.exists() and not (path / "config.json").is_file():
        raise UserError(f"{path} exists but is not a Hugging Face model dir (no config.json).")
    return name_or_path, {"use_safetensors": True}


def load_causal_lm(cfg: ModelConfig, source: str, dtype: torch.dtype, **extra: Any) -> Any:
    """`AutoModelForCausalLM.from_pretrained` with the model section's loading options (remote
    code, attention kernel), for every place that loads the policy's weights."""
    from transformers import AutoModelForCausalLM

    if cfg.attn_implementation:
        extra["attn_implementation"] = cfg.attn_implementation
    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=cfg.trust_remote_code,
                                                    **extra)
    except (ValueError, ImportError) as e:
        if not cfg.attn_implementation:
            raise
        raise UserError(f"model.attn_implementation={cfg.attn_implementation!r} cannot load {source}: {e}") from None


def load_policy_model(cfg: ModelConfig, source: str, device: torch.device, dtype: torch.dtype, **extra: Any) -> Any:
    """`load_causal_lm`, placed on `device` in eval mode, with the CPU's fast linears: every model
    the policy samples from, whether loaded from the base or from a full fine-tune's checkpoint."""
    model = load_causal_lm(cfg, source, dtype, **extra)
    model.to(device).eval()
    if device.type == "cpu":
        use_small_batch_linears(model, fp16_weights=cfg.cpu_fp16_weights)  # faster decode (cpu_fastpath.py)
    return model


def load_model_and_tokenizer(cfg: ModelConfig, device: torch.device, dtype: torch.dtype):
    from transformers import AutoTokenizer

    source, extra = resolve_model_source(cfg.name_or_path, cfg.gguf_file)
    tok_extra = {"gguf_file": extra["gguf_file"]} if "gguf_file" in extra else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code, **tok_extra)
        model = load_policy_model(cfg, source, device, dtype, **extra)
    except OSError as e:
        raise UserError(
            f"Could not load model {cfg.name_or_path!r}: {e}. Pass `embedded`, a local HF dir, a .gguf "
            "file, or a hub id (needs network; set HF_TOKEN for gated models)."
        ) from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


MIN_KEPT_TOKENS = 32
"""A cut prompt keeps at least this many of its own tokens, else the budget is a config error."""


class TransformersPolicy:
    """Batched sampling with our own loop (policy/decode.py); returns text plus prompt/completion
    token ids, the sampled tokens' log-probs and, when asked, the trunk's hidden states."""

    def __init__(self, model: Any, tokenizer: Any, name: str, batch_size: int = 16,
                 max_prompt_tokens: int = 0) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
        self.capture_layer: torch.nn.Module | None = None
        self.prefixes = PrefixCache()
        """Shared prompt prefixes' keys and values in the layers nothing trains (policy/prefill.py)."""
        self.truncation = TruncationCounter("policy prompt", "generation.max_prompt_length", max_prompt_tokens,
                                            "tokens")
        """Prompts longer than `max_prompt_tokens` (0 = no limit) are cut in the middle (budget.py)."""

    @contextlib.contextmanager
    def capturing(self, layer: torch.nn.Module | None) -> Iterator[None]:
        """Return each generation's hidden states after `layer` (Generation.trunk_states)."""
        self.capture_layer = layer
        try:
            yield
        finally:
            self.capture_layer = None

    @classmethod
    def from_config(cls, cfg: ModelConfig, generation_batch_size: int = 16, threads: int = 0,
                    seed: int = 0, max_prompt_tokens: int = 0) -> TransformersPolicy:
        set_threads(threads)
        torch.manual_seed(seed)
        device = resolve_device(cfg.device)
        model, tokenizer = load_model_and_tokenizer(cfg, device, resolve_dtype(cfg.dtype, device))
        model.requires_grad_(False)  # inference only: frozen weights may be packed (cpu_fastpath.py)
        return cls(model, tokenizer, cfg.name_or_path, generation_batch_size, max_prompt_tokens)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _encode(self, turn: Turn) -> list[int]:
        text = self.tokenizer.apply_chat_template(turn.messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text + turn.prefix, add_special_tokens=False)["input_ids"]

    def encode(self, turn: Turn) -> list[int]:
        """Chat template with the generation prompt, then the assistant prefix (CoT primer); a
        prompt over the budget has its longest message cut in the middle, by tokens."""
        ids = self._encode(turn)
        limit = self.truncation.limit
        if not limit or len(ids) <= limit:
            return ids
        self.truncation.record(len(ids))
        over = len(ids) - limit
        marker = len(self.tokenizer(CUT_MARKER, add_special_tokens=False)["input_ids"])
        for _ in range(3):  # re-tokenising at the joins can shift the count by a token or two
            drop = over + marker
            fitted = self._encode(turn.clip_longest(lambda text, drop=drop: self._cut_tokens(text, drop)))
            if len(fitted) <= limit:
                return fitted
            over += len(fitted) - limit
        return fitted

    def _cut_tokens(self, text: str, drop: int) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        keep = len(ids) - drop
        if keep < MIN_KEPT_TOKENS:
            raise UserError(
                f"generation.max_prompt_length={self.truncation.limit} tokens leaves almost no room for the "
                f"prompt itself: the instructions and chat template around it take most of it. Raise "
                f"generation.max_prompt_length (e.g. --set generation.max_prompt_length=1024)."
            )
        head, tail = keep_ends(ids, keep)
        return self.tokenizer.decode(head) + CUT_MARKER + self.tokenizer.decode(tail)

    def generate(self, turns: list[Turn], params: SamplingParams) -> list[Generation]:
        encoded = [self.encode(t) for t in turns]
        # Sort by length so each micro-batch pads little; restore order at the end.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out: list[Generation | None] = [None] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            for i, gen in zip(idx, self._generate_batch([encoded[i] for i in idx], params)):
                out[i] = gen
        return [g for g in out if g is not None]

    def _stopped(self, stop: tuple[str, ...]) -> Callable[[list[int]], bool] | None:
        """Whether a row's generated ids now end in a stop string: only the last few tokens are
        decoded (a string of n characters spans at most n tokens), microseconds per row and step.
        (transformers' own `stop_strings` precomputes tables over the whole vocabulary per call.)"""
        if not stop:
            return None
        window = max(len(s) for s in stop)

        def stopped(ids: list[int]) -> bool:
            text = self.tokenizer.decode(ids[-window:], skip_special_tokens=True)
            return any(s in text for s in stop)

        return stopped

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        # Our own loop (policy/decode.py): softmax(logits / T) exactly, whatever repetition penalty
        # or top-k a checkpoint's generation_config carries; finished rows leave the batch.
        rows = decode(self.model, prompts, max_new_tokens=params.max_new_tokens, temperature=params.temperature,
                      top_p=params.top_p, pad_id=self.tokenizer.pad_token_id, eos_ids=self.eos_ids,
                      stopped=self._stopped(params.stop), capture=self.capture_layer, prefixes=self.prefixes)
        gens = []
        for row in rows:
            states = None
            if row.states:
                # The prompt's states and one per token fed back; the last token never was.
                states = torch.cat(row.states + [row.states[0].new_zeros(1, row.states[0].shape[-1])])
            gens.append(Generation(
                text=self.tokenizer.decode(row.ids, skip_special_tokens=True), prompt_ids=row.prompt,
                completion_ids=row.ids, finish_reason=row.finish or "length", logprobs=row.logprobs,
                trunk_states=states,
            ))
        return gens
