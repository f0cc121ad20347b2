"""An LLM-simulated text environment (the paper's training setup), as a `TextEnv`.

The authors trained against environments played by an LLM: it wrote the next observation for each
action and judged success. `LLMSimEnv` does the same through any OpenAI-compatible endpoint, with
the shared `OpenAIClient` (concurrency cap, timeouts, retries with backoff, cache).

Task payload keys (`Task.payload`):
- "description" (required): the task as the agent sees it ("Your task is to: ...").
- "initial_observation": the first observation (default: the description).
- "world": hidden facts about the world for the simulator (where things are, ...).
- "reference": a reference solution (gold actions or notes) that tells the simulator what success is.
- "expert_actions": a list of actions returned by `expert_actions()` (optional).
Each step asks for one JSON object {"observation": str, "done": bool, "success": bool,
"score": number in [0, 1]}, parsed with repair. An endpoint that fails after its retries, or an
answer without an observation, raises `EnvError` (the rollout ends that episode as env_error);
both are counted in `stats()`.
"""
from __future__ import annotations

import threading
from typing import Optional, Sequence, Union

from pilotrl_jax.envs.base import EnvError, StepResult, Task, info_defaults
from pilotrl_jax.rewards.jsonrepair import as_number, parse_json_object
from pilotrl_jax.rewards.openai_client import ClientConfig, OpenAIClient

SIM_SYSTEM = (
    "You simulate a text-based environment for an agent. For each action you write what the "
    "environment shows next, in the environment's own terse style, consistent with the world and "
    "with everything that happened before. Actions that are impossible or malformed get "
    "'Nothing happens.' You never help the agent, never reveal hidden facts it has not observed, "
    "and answer with one JSON object only."
)

SIM_INSTRUCTIONS = """Answer with only this JSON object:
{"observation": "<what the environment shows after the action>", "done": <true when the episode is over>, "success": <true when the task has been completed>, "score": <progress towards the task from 0 to 1>}"""


def _as_bool(x) -> bool:
    if isinstance(x, str):
        return x.strip().lower() in ("true", "yes", "1")
    return bool(x)


class LLMSimEnv:
    """A TextEnv whose observations and success judgements come from an LLM endpoint."""

    def __init__(self, client: Union[OpenAIClient, ClientConfig], *, max_steps: int = 50, history_steps: int = 30,
                 max_tokens: int = 256, temperature: Optional[float] = None):
        self.client = OpenAIClient(client) if isinstance(client, ClientConfig) else client
        if not isinstance(self.client, OpenAIClient):
            raise TypeError(f"client is {type(client).__name__}; pass an OpenAIClient or a ClientConfig")
        if max_steps < 1 or history_steps < 1:
            raise ValueError(f"max_steps={max_steps}, history_steps={history_steps}; expected >= 1 each")
        self.max_steps, self.history_steps = max_steps, history_steps
        self.max_tokens, self.temperature = max_tokens, temperature
        self.task: Optional[Task] = None
        self.history: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._counts = dict(resets=0, steps=0, env_errors=0, parse_failures=0)

    def reset(self, task: Task) -> tuple[str, dict]:
        """Start `task` (payload: description, optional initial_observation/world/reference)."""
        if not isinstance(task, Task):
            raise TypeError(f"reset takes a Task, got {type(task).__name__}")
        desc = task.payload.get("description")
        if not isinstance(desc, str) or not desc.strip():
            raise ValueError(f"task {task.task_id!r} has no payload['description']; LLMSimEnv needs the task text there")
        self.task = task
        self.history = []
        self._count(resets=1)
        obs = task.payload.get("initial_observation") or desc
        if desc not in obs:
            obs = f"{obs}\n{desc}"
        return obs, info_defaults({"won": False, "score": 0.0})

    def messages(self, action: str) -> list[dict]:
        """The chat messages asking the simulator for the answer to `action`."""
        p = self.task.payload
        parts = [f"# Task given to the agent\n{p['description']}"]
        if p.get("initial_observation"):
            parts.append(f"# First observation\n{p['initial_observation']}")
        if p.get("world"):
            parts.append(f"# Hidden world facts (for you only)\n{p['world']}")
        if p.get("reference"):
            ref = p["reference"]
            ref = "\n".join(ref) if isinstance(ref, (list, tuple)) else str(ref)
            parts.append(f"# Reference solution (for you only; other solutions may also succeed)\n{ref}")
        hist = self.history[-self.history_steps:]
        if len(self.history) > len(hist):
            parts.append(f"(the first {len(self.history) - len(hist)} steps are omitted)")
        lines = [f"Action: {a}\nObservation: {o}" for a, o in hist]
        parts.append("# History\n" + ("\n".join(lines) if lines else "(none)"))
        parts.append(f"# New action\n{action}\n\n{SIM_INSTRUCTIONS}")
        return [{"role": "system", "content": SIM_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]

    def step(self, action: str) -> StepResult:
        """Ask the simulator for the next observation and success; raises EnvError when it cannot answer."""
        if self.task is None:
            raise RuntimeError("step called before reset; call reset(task) first")
        if not isinstance(action, str):
            raise TypeError(f"action must be str, got {type(action).__name__}")
        self._count(steps=1)
        res = self.client.chat(self.messages(action), temperature=self.temperature, max_tokens=self.max_tokens)
        if not res.ok:
            self._count(env_errors=1)
            raise EnvError(f"LLM environment endpoint failed after {res.attempts} attempt(s): {res.error}")
        obj, err = parse_json_object(res.content)
        obs = obj.get("observation") if obj is not None else None
        if not isinstance(obs, str):
            self._count(env_errors=1, parse_failures=1)
            raise EnvError(f"LLM environment answer has no 'observation' string ({err or sorted(obj)}): "
                           f"{(res.content or '')[:120]!r}")
        won = _as_bool(obj.get("success", obj.get("won", False)))
        score = as_number(obj.get("score"))
        score = 1.0 if won else min(max(score if score is not None else 0.0, 0.0), 1.0)
        self.history.append((action, obs))
        done = won or _as_bool(obj.get("done", False)) or len(self.history) >= self.max_steps
        return StepResult(obs, score, done, info_defaults({"won": won, "score": score, "cached": res.cached}))

    def expert_actions(self) -> Optional[Sequence[str]]:
        """payload['expert_actions'] where the task has them, else None."""
        if self.task is None:
            return None
        acts = self.task.payload.get("expert_actions")
        return list(acts)[len(self.history):] if acts else None

    def stats(self) -> dict:
        """Counters: resets, steps, env_errors, parse_failures, and the client's HTTP counters."""
        with self._lock:
            out = dict(self._counts)
        out.update(self.client.stats())
        return out

    def close(self) -> None:
        """Nothing to release (the client is the caller's to close)."""

    def _count(self, **kw):
        with self._lock:
            for k, v in kw.items():
                self._counts[k] += v
