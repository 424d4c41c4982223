"""`transformers` policy backend: local CPU/GPU generation from an HF id, a local dir or a GGUF.

GGUF files are dequantised once into a safetensors dir in the user cache (loading GGUF each
time costs ~50 s on 2 cores, the converted dir ~2 s). Other checkpoints load safetensors only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from selfredteam.budget import CUT_MARKER, TruncationCounter, keep_ends
from selfredteam.config import ModelConfig
from selfredteam.errors import UserError
from selfredteam.game.prompts import Turn
from selfredteam.policy.base import Generation, SamplingParams
from selfredteam.policy.cpu_fastpath import use_small_batch_linears
from selfredteam.policy.embedded import cache_dir, convert_gguf_to_hf, embedded_model_dir


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
    """One explicit thread count: oversubscribing 2 cores cut throughput 3-10x in measurements."""
    torch.set_num_threads(threads if threads > 0 else (os.cpu_count() or 1))


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


def load_model_and_tokenizer(cfg: ModelConfig, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, extra = resolve_model_source(cfg.name_or_path, cfg.gguf_file)
    tok_extra = {"gguf_file": extra["gguf_file"]} if "gguf_file" in extra else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code, **tok_extra)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=cfg.trust_remote_code, **extra
        )
    except OSError as e:
        raise UserError(
            f"Could not load model {cfg.name_or_path!r}: {e}. Pass `embedded`, a local HF dir, a .gguf "
            "file, or a hub id (needs network; set HF_TOKEN for gated models)."
        ) from None
    model.to(device).eval()
    if device.type == "cpu":
        use_small_batch_linears(model, fp16_weights=cfg.cpu_fp16_weights)  # faster decode (cpu_fastpath.py)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


@contextlib.contextmanager
def record_outputs(layer: torch.nn.Module, store: list[torch.Tensor]) -> Iterator[None]:
    """Append `layer`'s output hidden states of every forward pass to `store` (detached)."""
    def hook(module: Any, args: Any, output: Any) -> None:
        store.append((output[0] if isinstance(output, tuple) else output).detach())

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


MIN_KEPT_TOKENS = 32
"""A cut prompt keeps at least this many of its own tokens, else the budget is a config error."""


class StopOnText:
    """Stop a row once its generated tail contains a stop string.

    transformers' own `stop_strings` precomputes tables over the whole vocabulary on every
    generate() call (~seconds for a 152k vocabulary); decoding the last few tokens of each row
    per step costs microseconds.
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...], prompt_width: int) -> None:
        self.tokenizer, self.stop, self.start = tokenizer, stop, prompt_width
        self.window = max(len(s) for s in stop)  # a string of n chars spans at most n tokens

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        tail = input_ids[:, max(self.start, input_ids.shape[1] - self.window):]
        texts = self.tokenizer.batch_decode(tail, skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


class InverseCdfSampler:
    """A logits processor that samples each row from softmax(logits / T) (top-p optional) by
    inverse CDF and returns logits that make greedy decoding pick that token.

    Sampling stays in our hands: exactly the tempered distribution the learner scores, whatever
    repetition penalty or top-k a checkpoint's generation_config carries. And it is cheaper:
    `torch.multinomial` draws one exponential per vocabulary entry, 50 ms per step for 8 rows x
    152k on our 2-core CPU; a cumulative sum and one uniform per row take 12 ms.
    """

    def __init__(self, temperature: float, top_p: float = 1.0) -> None:
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            # Keep the smallest set of most likely tokens whose mass reaches top_p.
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = (sorted_p.cumsum(-1) - sorted_p) >= self.top_p
            probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        cdf = probs.cumsum(dim=-1)
        u = torch.rand(cdf.shape[0], 1, device=cdf.device) * cdf[:, -1:]
        token = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)


class TransformersPolicy:
    """Batched sampling with `model.generate`; returns text plus prompt/completion token ids."""

    def __init__(self, model: Any, tokenizer: Any, name: str, batch_size: int = 16,
                 max_prompt_tokens: int = 0) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
        self.capture_layer: torch.nn.Module | None = None
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

    def _stop_index(self, ids: list[int], stop: tuple[str, ...]) -> int | None:
        """Length of the shortest prefix of `ids` whose text contains a stop string (binary search:
        once a prefix contains it, every longer one does)."""
        def hit(n: int) -> bool:
            text = self.tokenizer.decode(ids[:n], skip_special_tokens=True)
            return any(s in text for s in stop)

        if not hit(len(ids)):
            return None
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if hit(mid) else (mid + 1, hi)
        return lo

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        sample = params.temperature > 0
        states: list[torch.Tensor] = []
        capture = contextlib.nullcontext() if self.capture_layer is None else record_outputs(self.capture_layer, states)
        # Greedy decoding over our sampler's one-hot logits (or plain greedy at T=0); every other
        # logits processor a checkpoint's generation_config might switch on is neutralised.
        with capture:
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=params.max_new_tokens,
                do_sample=False,
                temperature=None, top_p=None, top_k=None, min_p=None, typical_p=None,
                repetition_penalty=None, no_repeat_ngram_size=None,
                logits_processor=[InverseCdfSampler(params.temperature, params.top_p)] if sample else None,
                pad_token_id=pad,
                return_dict_in_generate=True,
                output_logits=True,
                stopping_criteria=[StopOnText(self.tokenizer, params.stop, width)] if params.stop else None,
            )
        # Captured states: the prefill's [B, width, H], then one position per decode step.
        trunk = torch.cat(states, dim=1) if states else None
        new_tokens = out.sequences[:, width:]
        # Raw logits of each step / temperature -> log-prob of the sampled token under the tempered
        # policy the learner optimises; step by step so only a [B, V] slice is ever in float32.
        temp = params.temperature if sample else 1.0
        step_logp = torch.stack([
            torch.log_softmax(lg.float() / temp, dim=-1).gather(-1, new_tokens[:, t : t + 1]).squeeze(-1)
            for t, lg in enumerate(out.logits)
        ], dim=1).tolist()
        gens = []
        for prompt, row, lps in zip(prompts, new_tokens.tolist(), step_logp):
            ids, finish = [], "length"
            for t in row:
                ids.append(t)  # EOS is kept: the learner must also learn when to stop
                if t in self.eos_ids:
                    finish = "stop"
                    break
            if params.stop:
                # A row that hit a stop string is padded afterwards (the pad may be an EOS id):
                # cut right after the stop string so only sampled tokens are kept and scored.
                cut = self._stop_index(ids, params.stop)
                if cut is not None:
                    ids, finish = ids[:cut], "stop"
            rows = None
            if trunk is not None:
                # Positions of this row's prompt and completion; the last token was never fed back.
                rows = trunk[len(gens), width - len(prompt) : width + len(ids) - 1]
                rows = torch.cat([rows, rows.new_zeros(1, rows.shape[-1])])
            gens.append(Generation(
                text=self.tokenizer.decode(ids, skip_special_tokens=True),
                prompt_ids=list(prompt), completion_ids=ids, finish_reason=finish, logprobs=lps[: len(ids)],
                trunk_states=rows,
            ))
        return gens
