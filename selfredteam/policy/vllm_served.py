"""Rollouts on a vLLM server while this process learns (`train.rollout_engine=vllm`).

Large runs sample with vLLM (the paper does); only the LoRA adapter moves: after every update
the learner writes it (megabytes) and asks the server to load it by name
(`POST /v1/load_lora_adapter`, vLLM started with `--enable-lora` and
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`), then unloads the previous one. A load that does not
finish within `train.vllm_sync_timeout_s` raises instead of hanging (the run saves a checkpoint
and stops with a resume hint). The adapter dir must be readable by the server (same machine or a
shared filesystem).

Prompts are sent as token ids made by our tokenizer and chat template, and the server returns
the sampled token ids (`return_token_ids`, vLLM >= 0.10.2), so the learner scores exactly what
was sampled. vLLM reports untempered log-probs, so the learner computes the "old" log-probs
itself (one no-grad pass). Behind the same Policy protocol as the local sampler: the loop does not
branch on the engine except to sync after an update.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfredteam.errors import EndpointError, UserError
from selfredteam.http import OpenAIClient
from selfredteam.policy.base import Generation, SamplingParams, Turn


class VLLMServedPolicy:
    def __init__(self, client: OpenAIClient, encoder: Any, base_model: str, sync_timeout_s: float = 120.0,
                 use_adapter: bool = True) -> None:
        self.client, self.encoder = client, encoder
        """`encoder` turns a Turn into prompt token ids (the local TransformersPolicy.encode)."""
        self.base_model, self.sync_timeout_s, self.use_adapter = base_model, sync_timeout_s, use_adapter
        self.adapter: str | None = None
        self.name = f"vllm:{base_model}"
        self.truncation = getattr(encoder, "truncation", None)

    def reference_view(self) -> VLLMServedPolicy:
        """The same server sampling the base model (the frozen reference: attacker-only runs)."""
        view = VLLMServedPolicy(self.client, self.encoder, self.base_model, self.sync_timeout_s, use_adapter=False)
        view.name = f"{self.name}:reference"
        return view

    @property
    def served_model(self) -> str:
        return self.adapter if self.use_adapter and self.adapter else self.base_model

    def sync(self, adapter_dir: Path, name: str) -> None:
        """Load the adapter written at `adapter_dir` under `name`, then unload the previous one."""
        previous = self.adapter
        try:
            self.client.post("load_lora_adapter", {"lora_name": name, "lora_path": str(adapter_dir)},
                             timeout=self.sync_timeout_s)
        except EndpointError as e:
            raise EndpointError(f"The vLLM server did not load LoRA adapter {name} from {adapter_dir} within "
                                f"train.vllm_sync_timeout_s={self.sync_timeout_s} s ({e}). Start vLLM with "
                                "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, on a machine that "
                                "can read that dir.") from None
        self.adapter = name
        if previous:
            self.client.post("unload_lora_adapter", {"lora_name": previous}, timeout=self.sync_timeout_s)

    def _one(self, turn: Turn, params: SamplingParams) -> Generation:
        prompt_ids = self.encoder.encode(turn)
        payload: dict[str, Any] = {"model": self.served_model, "prompt": prompt_ids, "max_tokens": params.max_new_tokens,
                                   "temperature": params.temperature, "top_p": params.top_p, "return_token_ids": True}
        if params.stop:
            payload.update(stop=list(params.stop), include_stop_str_in_output=True)
        choice = self.client.post("completions", payload)["choices"][0]
        ids = choice.get("token_ids")
        if ids is None:
            raise UserError("The vLLM server returned no token ids: training on vLLM rollouts needs vLLM >= 0.10.2 "
                            "(`return_token_ids`), so the learner scores exactly the sampled tokens.")
        return Generation(text=choice.get("text") or "", prompt_ids=list(prompt_ids), completion_ids=list(ids),
                          finish_reason=choice.get("finish_reason") or "stop")

    def generate(self, turns: list[Turn], params: SamplingParams) -> list[Generation]:
        return self.client.map(lambda t: self._one(t, params), turns)
