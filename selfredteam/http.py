"""One HTTP client for every OpenAI-compatible endpoint (policy chat, judge completions).

Timeouts, retries with exponential backoff, a concurrency limit, and an API key read from an
environment variable (never logged). After the last retry it raises `EndpointError` with a
one-paragraph message; callers decide whether that stops the run (with a checkpoint).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from selfredteam.errors import EndpointError, EndpointRejected

T = TypeVar("T")
R = TypeVar("R")


class OpenAIClient:
    def __init__(self, base_url: str, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 60.0,
                 max_retries: int = 3, max_concurrency: int = 8, backoff_s: float = 1.0,
                 what: str = "endpoint") -> None:
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.max_concurrency = max(1, max_concurrency)
        self.backoff_s = backoff_s
        self.what = what
        key = os.environ.get(api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers)

    def post(self, path: str, payload: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """POST JSON with retries on connection errors, timeouts, 429 and 5xx. `timeout` overrides
        the client's for this request. A reply that is not JSON (vLLM answers some admin calls
        with plain text) comes back as {"text": ...}."""
        url = f"{self.base_url}/{path.lstrip('/')}"
        last = ""
        extra = {"timeout": timeout} if timeout is not None else {}
        for attempt in range(self.max_retries + 1):
            try:
                resp = self._client.post(url, json=payload, **extra)
                if resp.status_code == 429 or resp.status_code >= 500:
                    last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                elif resp.status_code >= 400:
                    raise EndpointRejected(
                        f"The {self.what} at {url} rejected the request with HTTP {resp.status_code}: "
                        f"{resp.text[:300]}. Check the model name, the API key variable and the payload.",
                        resp.status_code, resp.text)
                else:
                    try:
                        return resp.json()
                    except ValueError:
                        return {"text": resp.text}
            except httpx.TimeoutException:
                last = "timed out"
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}"
            if attempt < self.max_retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise EndpointError(
            f"The {self.what} at {url} failed after {self.max_retries + 1} attempts (last error: {last}). "
            "Check that the server is running and reachable (e.g. `vllm serve MODEL --host 127.0.0.1`), "
            "or raise the timeout/retries in the config."
        )

    def map(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        """Apply `fn` to items with at most `max_concurrency` requests in flight, keeping order."""
        if len(items) <= 1 or self.max_concurrency == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(self.max_concurrency) as pool:
            return list(pool.map(fn, items))
