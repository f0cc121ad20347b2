"""A small OpenAI-compatible chat-completions client shared by the HTTP judge and the LLM-simulated env.

What it adds over a bare POST:
- a concurrency limit (a semaphore around each HTTP call; share one client between threads),
- a per-request timeout and retries with exponential backoff (+ jitter) on 429, 5xx, timeouts and
  connection errors (a `Retry-After` header is honoured, capped at `max_backoff_s`),
- a response cache keyed by a SHA-256 of the request (model, messages, sampling args): in memory and,
  optionally, in one JSON file on disk (loaded at start, rewritten atomically on new entries),
- counters for metrics (`stats()`), and results that never raise: `ChatResult.ok` False with an error,
- an optional deadline per call (`chat(deadline=...)`, a `time.monotonic()` time): no attempt, backoff or
  wait for a concurrency slot runs past it, and each attempt's timeout is cut to the time left.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import threading
import time
from typing import Any, Optional, Sequence

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """Where the endpoint is and how patiently to talk to it."""

    base_url: str  # e.g. "http://127.0.0.1:8000/v1" (".../chat/completions" is appended)
    model: str
    api_key_env: Optional[str] = None  # name of the env var holding the key (never the key itself)
    timeout_s: float = 60.0  # per HTTP request
    max_retries: int = 4  # extra attempts after the first
    backoff_s: float = 1.0  # first backoff; doubles each retry
    max_backoff_s: float = 30.0
    jitter: float = 0.25  # +- fraction of each backoff drawn at random
    max_concurrency: int = 8  # HTTP requests in flight at once through this client
    cache: bool = True
    cache_path: Optional[str] = None  # JSON file for an on-disk cache (None: memory only)
    cache_flush_every: int = 1  # rewrite the file after this many new entries (and on flush/close)
    temperature: float = 0.0
    max_tokens: int = 512
    extra_body: Optional[dict] = None  # merged into every request (e.g. {"response_format": {...}})

    def __post_init__(self):
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={self.base_url!r}; expected an http(s) URL such as 'http://127.0.0.1:8000/v1'")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model={self.model!r}; pass the served model name (as the endpoint lists it)")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.backoff_s < 0 or self.max_concurrency < 1:
            raise ValueError(
                f"timeout_s={self.timeout_s}, max_retries={self.max_retries}, backoff_s={self.backoff_s}, "
                f"max_concurrency={self.max_concurrency}; expected timeout_s > 0, max_retries >= 0, "
                "backoff_s >= 0 and max_concurrency >= 1"
            )


@dataclasses.dataclass
class ChatResult:
    """The outcome of one chat call: `ok` with `content`, or not ok with `error`."""

    ok: bool
    content: Optional[str] = None
    error: Optional[str] = None
    cached: bool = False
    attempts: int = 0
    latency_s: float = 0.0
    status: Optional[int] = None  # last HTTP status seen (None on timeouts/connection errors)


class _Stats:
    """Thread-safe counters."""

    def __init__(self):
        self._lock = threading.Lock()
        self.c = dict(requests=0, cache_hits=0, http_calls=0, retries=0, failures=0, timeouts=0,
                      http_errors=0, deadline_misses=0, latency_sum_s=0.0, latency_max_s=0.0, in_flight_max=0)
        self._in_flight = 0

    def add(self, **kw):
        """Add to counters."""
        with self._lock:
            for k, v in kw.items():
                self.c[k] += v

    def enter(self):
        """Count one HTTP call entering flight."""
        with self._lock:
            self._in_flight += 1
            self.c["in_flight_max"] = max(self.c["in_flight_max"], self._in_flight)

    def leave(self):
        """Count one HTTP call leaving flight."""
        with self._lock:
            self._in_flight -= 1

    def latency(self, s: float):
        """Record one call's latency."""
        with self._lock:
            self.c["latency_sum_s"] += s
            self.c["latency_max_s"] = max(self.c["latency_max_s"], s)

    def snapshot(self) -> dict:
        """Counters plus mean latency."""
        with self._lock:
            out = dict(self.c)
        calls = out["requests"] - out["cache_hits"]
        out["latency_mean_s"] = out["latency_sum_s"] / calls if calls > 0 else 0.0
        return out


def request_key(payload: dict) -> str:
    """SHA-256 hex of a request payload (sorted-key JSON): the cache key."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class OpenAIClient:
    """Chat completions against an OpenAI-compatible endpoint with retries, a concurrency cap and a cache."""

    def __init__(self, config: ClientConfig, transport: Any = None):
        import httpx

        self.config = config
        headers = {"Content-Type": "application/json"}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ValueError(
                    f"api_key_env={config.api_key_env!r} but that environment variable is unset or empty; "
                    "export it or pass api_key_env=None for endpoints without auth"
                )
            headers["Authorization"] = f"Bearer {key}"
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(config.timeout_s), transport=transport)
        self._sem = threading.BoundedSemaphore(config.max_concurrency)
        self._stats = _Stats()
        self._cache: dict[str, str] = {}
        self._cache_lock = threading.Lock()
        self._unsaved = 0
        self._rng = random.Random(0)
        if config.cache and config.cache_path and os.path.exists(config.cache_path):
            try:
                with open(config.cache_path, encoding="utf-8") as f:
                    data = json.load(f)
                if not isinstance(data, dict):
                    raise ValueError("top level is not an object")
                self._cache.update({str(k): str(v) for k, v in data.items()})
            except (OSError, ValueError) as e:
                raise ValueError(
                    f"cache_path={config.cache_path!r} is not a JSON object of cached answers ({e}); "
                    "delete the file or point cache_path elsewhere"
                ) from e

    # ------------------------------------------------------------------ public
    def payload(self, messages: Sequence[dict], temperature: Optional[float] = None,
                max_tokens: Optional[int] = None) -> dict:
        """The JSON body sent for `messages` (also what the cache key hashes)."""
        if isinstance(messages, (str, bytes)) or not all(
            isinstance(m, dict) and "role" in m and "content" in m for m in messages
        ):
            raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
        body = dict(model=self.config.model, messages=[dict(m) for m in messages],
                    temperature=self.config.temperature if temperature is None else float(temperature),
                    max_tokens=self.config.max_tokens if max_tokens is None else int(max_tokens))
        if self.config.extra_body:
            body.update(self.config.extra_body)
        return body

    def chat(self, messages: Sequence[dict], *, temperature: Optional[float] = None,
             max_tokens: Optional[int] = None, use_cache: bool = True, deadline: Optional[float] = None) -> ChatResult:
        """One chat completion, given up at `deadline` (a `time.monotonic()` time; None: only the retry
        budget bounds it); never raises on network/HTTP trouble (see `ChatResult.ok`)."""
        body = self.payload(messages, temperature, max_tokens)
        self._stats.add(requests=1)
        key = request_key(body)
        if self.config.cache and use_cache:
            with self._cache_lock:
                hit = self._cache.get(key)
            if hit is not None:
                self._stats.add(cache_hits=1)
                return ChatResult(ok=True, content=hit, cached=True)
        t0 = time.monotonic()
        res = self._call_with_retries(body, deadline)
        res.latency_s = time.monotonic() - t0
        self._stats.latency(res.latency_s)
        if res.ok and self.config.cache:
            self._store(key, res.content)
        if not res.ok:
            self._stats.add(failures=1)
        return res

    def stats(self) -> dict:
        """Counters: requests, cache_hits, http_calls, retries, failures, timeouts, deadline_misses, latency (s)."""
        return self._stats.snapshot()

    def flush(self) -> None:
        """Write unsaved cache entries to `cache_path` (atomically)."""
        with self._cache_lock:
            self._write_locked()

    def close(self) -> None:
        """Flush the on-disk cache and close the HTTP connection pool."""
        self.flush()
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ internals
    def _store(self, key: str, content: str) -> None:
        with self._cache_lock:
            self._cache[key] = content
            self._unsaved += 1
            if self._unsaved >= max(1, self.config.cache_flush_every):
                self._write_locked()

    def _write_locked(self) -> None:
        if not self.config.cache_path or not self._unsaved:
            return
        tmp = f"{self.config.cache_path}.tmp{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self._cache, f, ensure_ascii=False)
        os.replace(tmp, self.config.cache_path)
        self._unsaved = 0

    def _backoff(self, attempt: int, retry_after: Optional[float]) -> float:
        c = self.config
        wait = min(c.backoff_s * (2 ** attempt), c.max_backoff_s)
        wait *= 1.0 + c.jitter * (2 * self._rng.random() - 1)
        if retry_after is not None:
            wait = max(wait, min(retry_after, c.max_backoff_s))
        return max(wait, 0.0)

    def _past_deadline(self, attempts: int, error: str, status: Optional[int]) -> ChatResult:
        self._stats.add(deadline_misses=1)
        return ChatResult(ok=False, error=f"deadline reached after {attempts} attempt(s); last: {error}",
                          attempts=attempts, status=status)

    def _take_slot(self, deadline: Optional[float]) -> Optional[float]:
        """Take a concurrency slot; the attempt's timeout (s), or None (no slot) once `deadline` has passed."""
        if deadline is None:
            self._sem.acquire()
            return self.config.timeout_s
        if not self._sem.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            self._sem.release()
            return None
        return min(self.config.timeout_s, left)

    def _call_with_retries(self, body: dict, deadline: Optional[float] = None) -> ChatResult:
        import httpx

        c = self.config
        error, status = "no attempt made", None
        for attempt in range(c.max_retries + 1):
            retry_after = None
            timeout = self._take_slot(deadline)
            if timeout is None:
                return self._past_deadline(attempt, error, status)
            if attempt:
                self._stats.add(retries=1)
            self._stats.add(http_calls=1)
            try:
                self._stats.enter()
                try:
                    resp = self._http.post(self.url, json=body, timeout=timeout)
                finally:
                    self._stats.leave()
                    self._sem.release()
            except httpx.TimeoutException as e:
                self._stats.add(timeouts=1)
                error, status, retryable = f"timeout after {timeout:.3g}s ({type(e).__name__})", None, True
            except httpx.HTTPError as e:
                error, status, retryable = f"connection error: {type(e).__name__}: {e}", None, True
            else:
                status = resp.status_code
                if status == 200:
                    content, err = _content_of(resp)
                    if err is None:
                        return ChatResult(ok=True, content=content, attempts=attempt + 1, status=status)
                    # A 200 whose body is not a chat completion: the server is broken, not busy.
                    return ChatResult(ok=False, error=err, attempts=attempt + 1, status=status)
                self._stats.add(http_errors=1)
                error = f"HTTP {status}: {resp.text[:200]}"
                retryable = status in RETRY_STATUS
                try:
                    retry_after = float(resp.headers.get("retry-after")) if resp.headers.get("retry-after") else None
                except ValueError:
                    retry_after = None
            if not retryable or attempt == c.max_retries:
                return ChatResult(ok=False, error=error, attempts=attempt + 1, status=status)
            wait = self._backoff(attempt, retry_after)
            if deadline is not None and time.monotonic() + wait >= deadline:
                return self._past_deadline(attempt + 1, error, status)
            time.sleep(wait)
        return ChatResult(ok=False, error=error, attempts=c.max_retries + 1, status=status)


def _content_of(resp) -> tuple[Optional[str], Optional[str]]:
    """The first choice's message content of a chat-completions response, or an error."""
    try:
        data = resp.json()
    except ValueError:
        return None, f"HTTP 200 but the body is not JSON: {resp.text[:200]!r}"
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None, f"HTTP 200 but no choices[0].message.content in {str(data)[:200]!r}"
    if not isinstance(content, str):
        return None, f"choices[0].message.content is {type(content).__name__}, expected str"
    return content, None
