"""A plan judge served by an OpenAI-compatible chat endpoint (vLLM, hosted APIs).

Requests go through `OpenAIClient` (concurrency cap, timeouts, retries with backoff, cache);
the units of a batch are sent from a thread pool no larger than the client's concurrency limit.
Answers are parsed as JSON with repair; a request that fails after its retries, or an answer that
cannot be parsed, is a failed unit (counted in `stats()`), never a score of 0.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Union

from pilotrl_jax.rewards.judge import Judge
from pilotrl_jax.rewards.openai_client import ClientConfig, OpenAIClient


class HTTPJudge(Judge):
    """The rubric judge through an OpenAI-compatible `/chat/completions` endpoint."""

    def __init__(self, client: Union[OpenAIClient, ClientConfig, None] = None, *, base_url: Optional[str] = None,
                 model: Optional[str] = None, api_key_env: Optional[str] = None, max_units: Optional[int] = None,
                 min_ok_fraction: float = 0.5, max_history_chars: int = 6000, max_tokens: int = 256,
                 temperature: float = 0.0, **client_kw):
        super().__init__()
        if client is None:
            if base_url is None or model is None:
                raise ValueError("HTTPJudge needs a client, a ClientConfig, or base_url= and model=")
            client = ClientConfig(base_url=base_url, model=model, api_key_env=api_key_env, **client_kw)
        elif client_kw or base_url or model:
            raise ValueError("pass either a client/ClientConfig or base_url/model/client options, not both")
        self.client = OpenAIClient(client) if isinstance(client, ClientConfig) else client
        if not isinstance(self.client, OpenAIClient):
            raise TypeError(f"client is {type(client).__name__}; pass an OpenAIClient or a ClientConfig")
        if not 0.0 < min_ok_fraction <= 1.0:
            raise ValueError(f"min_ok_fraction={min_ok_fraction}; expected a share in (0, 1]")
        self.max_units = max_units
        self.min_ok_fraction = min_ok_fraction
        self.max_history_chars = max_history_chars
        self.max_tokens = max_tokens
        self.temperature = temperature

    def _answer(self, messages):
        def one(m):
            try:
                res = self.client.chat(m, temperature=self.temperature, max_tokens=self.max_tokens)
            except Exception as e:  # noqa: BLE001 - a judge never raises out of score()
                return None, f"{type(e).__name__}: {e}"
            return (res.content, None) if res.ok else (None, res.error)

        workers = max(1, min(self.client.config.max_concurrency, len(messages)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, messages))

    def stats(self) -> dict:
        """Judge counters plus the client's: requests, cache_hits, retries, failures, timeouts, latency."""
        return self._stats.as_dict(self.client.stats())

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()
