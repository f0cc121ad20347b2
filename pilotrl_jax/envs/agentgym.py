"""AgentGym-protocol environments over HTTP: a TextEnv client and a small server for any TextEnv.

AgentGym's env servers (WebShop, SciWorld, BabyAI, TextCraft, ...) each expose
  POST /create -> {"id": ...} (WebShop: a bare int)      POST /reset {"id", "data_idx"}
  POST /step {"id", "action"} -> {"observation", "reward", "done", ...}
  GET /observation?id=...                                 POST /close {"id"}
with small differences per server (WebShop names the id "env_idx", the reset index
"session_id" and the observation "state"; SciWorld reports score 0..100). `AgentGymProtocol`
holds those names; `PRESETS` has the known variants. Network failures, HTTP errors and
timeouts raise `EnvError` (after retries where a retry is safe).
"""
from __future__ import annotations

import dataclasses
import json
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping, Sequence

from pilotrl_jax.envs.base import EnvError, StepResult, Task, info_defaults

ENV_NAME = "agentgym"


@dataclasses.dataclass(frozen=True)
class AgentGymProtocol:
    """Field names and conventions of one AgentGym-style server."""

    id_field: str = "id"  # env id key in request bodies and the observation query string
    create_path: str = "/create"
    step_path: str = "/step"
    reset_path: str = "/reset"
    observation_path: str = "/observation"
    close_path: str = "/close"
    reset_index_field: str = "data_idx"
    action_field: str = "action"
    observation_keys: tuple[str, ...] = ("observation", "state")
    task_description_key: str | None = "task_description"  # prepended to the reset observation
    reward_key: str = "reward"
    done_key: str = "done"
    score_key: str | None = "score"  # None: the score is the best reward so far
    won_key: str | None = None  # a boolean the server sends, if any ("won", "success")
    score_scale: float = 1.0  # divide the server's score/reward by this (SciWorld: 100)
    won_threshold: float = 1.0  # won when the scaled score reaches this
    reset_fetches_observation: bool = False  # reset's answer lacks the observation: GET it
    create_body: Mapping[str, Any] | None = None  # JSON body for /create (TextCraft: goal...)


PRESETS: dict[str, AgentGymProtocol] = {
    "default": AgentGymProtocol(),
    "sciworld": AgentGymProtocol(score_scale=100.0),
    "babyai": AgentGymProtocol(),
    "textcraft": AgentGymProtocol(score_key=None),
    "webshop": AgentGymProtocol(id_field="env_idx", reset_index_field="session_id",
                                observation_keys=("state", "observation"), score_key=None,
                                task_description_key=None, reset_fetches_observation=True),
}


def get_protocol(protocol: str | AgentGymProtocol | Mapping[str, Any] = "default") -> AgentGymProtocol:
    """A preset name, an AgentGymProtocol, or a dict of overrides on the default protocol."""
    if isinstance(protocol, AgentGymProtocol):
        return protocol
    if isinstance(protocol, str):
        if protocol not in PRESETS:
            raise ValueError(f"protocol={protocol!r}; expected one of {sorted(PRESETS)} "
                             "or an AgentGymProtocol")
        return PRESETS[protocol]
    if isinstance(protocol, Mapping):
        fields = {f.name for f in dataclasses.fields(AgentGymProtocol)}
        bad = sorted(set(protocol) - fields)
        if bad:
            raise ValueError(f"protocol has unknown fields {bad}; expected some of {sorted(fields)}")
        base = PRESETS[protocol.get("preset", "default")] if "preset" in protocol else PRESETS["default"]
        kw = {k: (tuple(v) if k == "observation_keys" else v) for k, v in protocol.items()}
        return dataclasses.replace(base, **kw)
    raise ValueError(f"protocol={protocol!r}; expected a preset name, dict or AgentGymProtocol")


class _Retryable(Exception):
    pass


class AgentGymEnv:
    """TextEnv client for one environment instance on an AgentGym-protocol server.

    `base_url`: e.g. "http://127.0.0.1:36001". `timeout`: seconds per HTTP call. `retries`:
    extra attempts after a refused connection or HTTP 502/503/504 (the request did not run);
    a timeout is retried only for idempotent calls (reset, observation, close), never for
    step or create. The server env is created on the first reset.
    Tasks carry payload {"data_idx": int}.
    """

    RETRY_STATUS = (502, 503, 504)

    def __init__(self, base_url: str, protocol: str | AgentGymProtocol | Mapping = "default",
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.25):
        parsed = urllib.parse.urlparse(base_url or "")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"base_url={base_url!r}; expected 'http://host:port'")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout={timeout!r}; expected a positive number of seconds")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries={retries!r}; expected a non-negative int")
        self.base_url = base_url.rstrip("/")
        self.protocol = get_protocol(protocol)
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.env_id: Any = None
        self._stale = False
        self._task: Task | None = None
        self._done = False
        self._score = 0.0
        self._won = False

    # ------------------------------------------------------------------ HTTP
    def _request(self, method: str, path: str, body: Mapping | None = None,
                 query: Mapping | None = None, idempotent: bool = False) -> Any:
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * (2 ** (attempt - 1)))
            req = urllib.request.Request(url, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                try:
                    return json.loads(raw) if raw.strip() else None
                except ValueError as e:
                    raise EnvError(f"{method} {url}: answer is not JSON: {raw[:200]!r}") from e
            except urllib.error.HTTPError as e:
                text = e.read()[:300].decode("utf-8", "replace") if e.fp else ""
                last = EnvError(f"{method} {url}: HTTP {e.code} {e.reason}: {text}")
                if e.code not in self.RETRY_STATUS:
                    raise last from e
            except (TimeoutError, socket.timeout) as e:
                last = EnvError(f"{method} {url}: no answer within {self.timeout:g}s")
                if not idempotent:
                    raise last from e
            except urllib.error.URLError as e:
                reason = e.reason
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    last = EnvError(f"{method} {url}: no answer within {self.timeout:g}s")
                    if not idempotent:
                        raise last from e
                elif isinstance(reason, ConnectionRefusedError):
                    last = EnvError(f"{method} {url}: connection refused (is the server running?)")
                else:
                    last = EnvError(f"{method} {url}: {reason}")
                    if not idempotent:
                        raise last from e
            except (ConnectionError, OSError) as e:
                last = EnvError(f"{method} {url}: {type(e).__name__}: {e}")
                if not idempotent:
                    raise last from e
        raise EnvError(f"{last} (after {self.retries + 1} attempts)")

    def _post(self, path: str, body: dict, idempotent: bool = False) -> Any:
        if self.env_id is not None:
            body = {self.protocol.id_field: self.env_id, **body}
        return self._request("POST", path, body, idempotent=idempotent)

    # ------------------------------------------------------------------ parsing
    def _observation_of(self, resp: Any) -> str | None:
        if isinstance(resp, str):
            return resp
        if isinstance(resp, Mapping):
            for key in self.protocol.observation_keys:
                if key in resp and resp[key] is not None:
                    return str(resp[key])
        if isinstance(resp, (list, tuple)) and resp and isinstance(resp[0], str):
            return resp[0]
        return None

    def _create(self) -> None:
        p = self.protocol
        body = dict(p.create_body) if p.create_body is not None else {}
        resp = self._request("POST", p.create_path, body)
        if isinstance(resp, Mapping):
            if p.id_field in resp:
                self.env_id = resp[p.id_field]
            elif "id" in resp:
                self.env_id = resp["id"]
            else:
                raise EnvError(f"/create answered {resp!r}; no {p.id_field!r} field "
                               "(set protocol id_field)")
        elif isinstance(resp, (int, str)):
            self.env_id = resp
        else:
            raise EnvError(f"/create answered {resp!r}; expected an id or {{'{p.id_field}': ...}}")
        self._stale = False

    def observation(self) -> str:
        """The server's current observation (GET observation_path)."""
        if self.env_id is None:
            raise RuntimeError("AgentGymEnv: call reset(task) first")
        resp = self._request("GET", self.protocol.observation_path,
                             query={self.protocol.id_field: self.env_id}, idempotent=True)
        obs = self._observation_of(resp)
        if obs is None:
            raise EnvError(f"observation answer {resp!r} has none of {self.protocol.observation_keys}")
        return obs

    def _info(self, resp: Any) -> dict:
        info: dict = {"data_idx": self._task.payload["data_idx"] if self._task else None}
        if isinstance(resp, Mapping) and isinstance(resp.get("info"), Mapping):
            extra = resp["info"]
            if "admissible_actions" in extra:
                info["admissible_actions"] = list(extra["admissible_actions"])
        return info_defaults(info, won=self._won, score=self._score)

    # ------------------------------------------------------------------ protocol
    def reset(self, task: Task) -> tuple[str, dict]:
        """Create the server env if needed, then reset it to the task's data_idx."""
        if not isinstance(task, Task) or "data_idx" not in task.payload:
            raise ValueError(f"task={task!r}; expected a Task with payload {{'data_idx': int}} "
                             "(see load_tasks)")
        if self._stale and self.env_id is not None:
            try:
                self.close()  # best effort: the old server env may be broken
            except EnvError:
                pass
        if self.env_id is None:
            self._create()
        p = self.protocol
        resp = self._post(p.reset_path, {p.reset_index_field: task.payload["data_idx"]}, idempotent=True)
        obs = None if p.reset_fetches_observation else self._observation_of(resp)
        if obs is None:
            obs = self.observation()
        if p.task_description_key and isinstance(resp, Mapping) and resp.get(p.task_description_key):
            desc = str(resp[p.task_description_key])
            if desc not in obs:
                obs = f"{desc}\n{obs}"
        self._task = task
        self._done, self._score, self._won = False, 0.0, False
        return obs, self._info(resp)

    def step(self, action: str) -> StepResult:
        """POST the action; EnvError if the server fails or does not answer in time."""
        if self._task is None:
            raise RuntimeError("AgentGymEnv: call reset(task) before step")
        if not isinstance(action, str):
            raise TypeError(f"action={action!r}; expected a str")
        if self._done:
            return StepResult("The episode is over.", 0.0, True, self._info(None))
        p = self.protocol
        try:
            resp = self._post(p.step_path, {p.action_field: action})
        except EnvError:
            self._stale = True
            raise
        obs = self._observation_of(resp)
        if obs is None or not isinstance(resp, Mapping):
            self._stale = True
            raise EnvError(f"step answer {resp!r} has none of {p.observation_keys}")
        server_reward = float(resp.get(p.reward_key) or 0.0)
        old = self._score
        if p.score_key and resp.get(p.score_key) is not None:
            raw = float(resp[p.score_key]) / p.score_scale
        else:
            raw = max(old, server_reward / p.score_scale)
        self._score = min(max(raw, 0.0), 1.0)
        if p.won_key and p.won_key in resp:
            self._won = bool(resp[p.won_key])
        else:
            self._won = raw >= p.won_threshold - 1e-9
        self._done = bool(resp.get(p.done_key, False)) or self._won
        info = self._info(resp)
        info["server_reward"] = server_reward
        return StepResult(obs, self._score - old, self._done, info)

    def expert_actions(self) -> Sequence[str] | None:
        """AgentGym servers serve no expert; always None."""
        return None

    def close(self) -> None:
        """Close the server env (best effort: a dead server raises EnvError, the id is dropped)."""
        if self.env_id is None:
            return
        try:
            self._post(self.protocol.close_path, {}, idempotent=True)
        finally:
            self.env_id = None
            self._task = None


def make_tasks(split: str = "train", n: int | None = None, seed: int = 0,
               indices: Mapping[str, Sequence[int] | tuple[int, int]] | None = None,
               server: str = ENV_NAME) -> list[Task]:
    """Tasks for data indices of a server; `indices` maps split -> list of ints or (start, stop).
    `server` names the served environment ("webshop", ...): it becomes task_type and prefixes task_id.

    AgentGym servers number their items without saying which are train or test, so the split
    ranges must be given, e.g. indices={"train": (0, 5000), "heldout": (5000, 5200)}.
    """
    if not indices or split not in indices:
        raise ValueError(f"split={split!r} has no data indices; pass indices={{'{split}': (start, stop)"
                         " or [idx, ...]}} for the server's items")
    spec = indices[split]
    if isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(x, int) for x in spec):
        idx = list(range(spec[0], spec[1]))
    else:
        idx = [int(i) for i in spec]
    if n is not None:
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n={n!r}; expected a non-negative int or None (all)")
        if n < len(idx):
            idx = sorted(random.Random(f"agentgym-{server}-{seed}-{split}").sample(idx, n))
    return [Task(env=ENV_NAME, task_id=f"{server}-{i}", task_type=server, split=split,
                 payload={"data_idx": i}) for i in idx]


# ---------------------------------------------------------------------------------- server
class AgentGymServer:
    """Serve any TextEnv over the AgentGym protocol (threaded http.server), e.g. for tests.

    `env_factory()` builds one env per /create; `tasks[data_idx]` is what /reset starts.
    Hooks (fault injection and field renaming in tests): `before_request(method, path, body,
    query)` may edit body/query in place, and return (status, payload) to answer instead, or
    None to go on; `after_request(method, path, status, payload)` returns (status, payload).
    """

    def __init__(self, env_factory: Callable[[], Any], tasks: Sequence[Task], host: str = "127.0.0.1",
                 port: int = 0, before_request: Callable | None = None,
                 after_request: Callable | None = None):
        self.env_factory = env_factory
        self.tasks = list(tasks)
        self.before_request = before_request
        self.after_request = after_request
        self.envs: dict[int, Any] = {}
        self._next = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:43121."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "AgentGymServer":
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="agentgym-server")
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and close every env."""
        self._httpd.shutdown()
        self._httpd.server_close()
        for env in list(self.envs.values()):
            try:
                env.close()
            except Exception:  # noqa: BLE001
                pass
        self.envs.clear()

    def __enter__(self) -> "AgentGymServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _env(self, body: Mapping) -> tuple[int, Any]:
        eid = int(body["id"])
        if eid not in self.envs:
            raise KeyError(f"no env with id {eid}")
        return eid, self.envs[eid]

    def handle(self, method: str, path: str, body: dict, query: dict) -> tuple[int, Any]:
        """Answer one request through the hooks: (HTTP status, JSON payload)."""
        if self.before_request is not None:
            short = self.before_request(method, path, body, query)
            if short is not None:
                return short
        status, payload = self.dispatch(method, path, body, query)
        if self.after_request is not None:
            status, payload = self.after_request(method, path, status, payload)
        return status, payload

    def dispatch(self, method: str, path: str, body: dict, query: dict) -> tuple[int, Any]:
        """Answer one request (no hooks): (HTTP status, JSON payload)."""
        try:
            if method == "POST" and path == "/create":
                with self._lock:
                    eid = self._next
                    self._next += 1
                self.envs[eid] = self.env_factory()
                return 200, {"id": eid}
            if method == "POST" and path == "/reset":
                eid, env = self._env(body)
                idx = int(body["data_idx"])
                if not 0 <= idx < len(self.tasks):
                    return 400, {"error": f"data_idx {idx} out of range 0..{len(self.tasks) - 1}"}
                obs, info = env.reset(self.tasks[idx])
                env._agentgym_last = obs
                return 200, {"observation": obs, "reward": 0.0, "score": 0.0, "done": False,
                             "info": _jsonable(info)}
            if method == "POST" and path == "/step":
                eid, env = self._env(body)
                res = env.step(str(body["action"]))
                env._agentgym_last = res.observation
                return 200, {"observation": res.observation, "reward": res.reward,
                             "score": res.info.get("score", 0.0), "done": res.done,
                             "won": bool(res.info.get("won", False)), "info": _jsonable(res.info)}
            if method == "GET" and path == "/observation":
                eid, env = self._env({"id": query.get("id", ["-1"])[0]})
                return 200, getattr(env, "_agentgym_last", "")
            if method == "POST" and path == "/close":
                eid, env = self._env(body)
                env.close()
                del self.envs[eid]
                return 200, {"closed": True}
        except KeyError as e:
            return 404, {"error": str(e)}
        except (TypeError, ValueError) as e:
            return 400, {"error": str(e)}
        return 404, {"error": f"no route {method} {path}"}

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _answer(self, method):
                parsed = urllib.parse.urlparse(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    status, payload = 400, {"error": "body is not JSON"}
                else:
                    try:
                        status, payload = server.handle(method, parsed.path, body,
                                                        urllib.parse.parse_qs(parsed.query))
                    except Exception as e:  # noqa: BLE001
                        status, payload = 500, {"error": f"{type(e).__name__}: {e}"}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

            def do_POST(self):
                self._answer("POST")

            def do_GET(self):
                self._answer("GET")

        return Handler


def _jsonable(info: Mapping) -> dict:
    """Keep the JSON-serialisable part of an info dict."""
    out = {}
    for k, v in info.items():
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[k] = v
    return out
