"""A plan judge served by an OpenAI-compatible chat endpoint (vLLM, hosted APIs).

Requests go through `OpenAIClient` (concurrency cap, timeouts, retries with backoff, cache);
the units of a batch are sent from daemon threads no more than the client's concurrency limit.
Answers are parsed as JSON with repair; a request that fails after its retries, or an answer that
cannot be parsed, is a failed unit (counted in `stats()`), never a score of 0.

With `deadline_s`, one `score()` call (one training step's judging) returns by then: the client
gives up its retries at the deadline, and a unit still unanswered is a failed unit. A thread still
blocked in the network cannot hold the process open (daemon) nor write into a later call's results
(each call collects into its own list).
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Optional, Sequence, Union

from pilotrl_jax.rewards.judge import Judge
from pilotrl_jax.rewards.openai_client import ClientConfig, OpenAIClient


_UNANSWERED = object()


def map_until(fn: Callable[[Any], Any], items: Sequence[Any], workers: int, deadline: Optional[float]) -> list:
    """[fn(x) for x in items] on `workers` daemon threads; an item not done by `deadline` (a
    `time.monotonic()` time; None: wait for all) is `_UNANSWERED`, and items not started by then are skipped."""
    results = [_UNANSWERED] * len(items)
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for i in range(len(items)):
        todo.put(i)
    finished = threading.Semaphore(0)
    stop = threading.Event()

    def work():
        while not stop.is_set():
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            try:
                results[i] = fn(items[i])
            finally:
                finished.release()

    for k in range(max(1, min(workers, len(items)))):
        threading.Thread(target=work, name=f"http-judge-{k}", daemon=True).start()
    for _ in items:
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not finished.acquire(timeout=left):
            break
    stop.set()
    return list(results)  # a copy: answers that land later never reach the caller


class HTTPJudge(Judge):
    """The rubric judge through an OpenAI-compatible `/chat/completions` endpoint."""

    def __init__(self, client: Union[OpenAIClient, ClientConfig, None] = None, *, base_url: Optional[str] = None,
                 model: Optional[str] = None, api_key_env: Optional[str] = None, max_units: Optional[int] = None,
                 min_ok_fraction: float = 0.5, max_history_chars: int = 6000, max_tokens: int = 256,
                 temperature: float = 0.0, deadline_s: Optional[float] = None, **client_kw):
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
        if deadline_s is not None and not deadline_s > 0:
            raise ValueError(f"deadline_s={deadline_s}; expected seconds > 0 for one score() call, or None for "
                             "no deadline (config: judge.deadline, 0 disables)")
        self.max_units = max_units
        self.min_ok_fraction = min_ok_fraction
        self.max_history_chars = max_history_chars
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.deadline_s = deadline_s

    def _answer(self, messages):
        deadline = None if self.deadline_s is None else time.monotonic() + self.deadline_s

        def one(m):
            try:
                res = self.client.chat(m, temperature=self.temperature, max_tokens=self.max_tokens, deadline=deadline)
            except Exception as e:  # noqa: BLE001 - a judge never raises out of score()
                return None, f"{type(e).__name__}: {e}"
            return (res.content, None) if res.ok else (None, res.error)

        got = map_until(one, messages, self.client.config.max_concurrency, deadline)
        missed = sum(r is _UNANSWERED for r in got)
        if missed:
            self._stats.add(unanswered=missed)
        return [(None, f"no answer within the judge deadline of {self.deadline_s}s") if r is _UNANSWERED else r
                for r in got]

    def stats(self) -> dict:
        """Judge counters plus the client's: requests, cache_hits, retries, failures, timeouts, latency."""
        return self._stats.as_dict(self.client.stats())

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()
