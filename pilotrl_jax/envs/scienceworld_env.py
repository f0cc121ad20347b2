"""ScienceWorld (the `scienceworld` package, a Scala simulator behind py4j) as a TextEnv.

One JVM per env object, started once and reused across resets (a reset reloads the task in
the running simulator). Score comes from the engine (0..100, normalised to 0..1), done when the
engine says the task is completed or failed (negative score) or at `step_limit` moves, won when
the score reaches 100. Expert actions are the engine's gold action sequence.

Splits: ScienceWorld divides each task's variations into train/dev/test; here "train" -> train,
"dev" -> dev, "test" and "heldout" -> test.
"""
from __future__ import annotations

import contextlib
import logging
import random
import time
from typing import Sequence

from pilotrl_jax.envs.base import StepResult, Task, TimedEnv, info_defaults

ENV_NAME = "scienceworld"
SPLITS = ("train", "dev", "test", "heldout")
_SPLIT_METHOD = {"train": "getVariationsTrain", "dev": "getVariationsDev",
                 "test": "getVariationsTest", "heldout": "getVariationsTest"}
logger = logging.getLogger(__name__)


def _start_engine(jar_path: str | None = None):
    """Start the ScienceWorld JVM (about a second) and return the package's wrapper object."""
    try:
        from scienceworld import ScienceWorldEnv as _Engine
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("ScienceWorld needs the `scienceworld` package (and Java >= 11): "
                          "pip install scienceworld") from e
    return _Engine("", serverPath=jar_path, envStepLimit=10**9)


def _close_engine(engine) -> None:
    """Shut the JVM down; idempotent."""
    if engine is None:
        return
    with contextlib.suppress(Exception):
        engine.close()
    # the wrapper's __del__ calls close() again; make that a no-op
    with contextlib.suppress(Exception):
        engine.close = lambda: None


class ScienceWorldEnv(TimedEnv):
    """ScienceWorld behind the TextEnv protocol; one JVM reused across resets.

    `step_limit`: done after this many engine moves (None: only the engine ends episodes).
    `simplifications`: default ScienceWorld simplification string ("" or e.g. "easy"), a task's
    payload may override it. `gold_path`: generate the gold action sequence at reset (needed by
    expert_actions(); costs 0.2-1 s per reset). `with_admissible`: put the engine's valid action
    list in every info (costs about 0.1-0.3 s per step; `admissible_actions()` is always there).
    """

    def __init__(self, step_limit: int | None = 100, simplifications: str = "",
                 gold_path: bool = True, with_admissible: bool = False, jar_path: str | None = None):
        if step_limit is not None and (not isinstance(step_limit, int) or step_limit < 1):
            raise ValueError(f"step_limit={step_limit!r}; expected a positive int or None")
        if not isinstance(simplifications, str):
            raise ValueError(f"simplifications={simplifications!r}; expected a comma-separated str")
        self.step_limit = step_limit
        self.simplifications = simplifications
        self.gold_path = bool(gold_path)
        self.with_admissible = bool(with_admissible)
        t = time.perf_counter()
        self._engine = _start_engine(jar_path)
        self.startup_seconds = time.perf_counter() - t
        # cumulative wall-clock seconds and counts, for benchmarks and logs
        self.timings = {"startup_s": self.startup_seconds, "reset_s": 0.0, "step_s": 0.0,
                        "n_reset": 0, "n_step": 0}
        self._server = self._engine.server
        self._names: list[str] | None = None
        self._task: Task | None = None
        self._gold: list[str] | None = None
        self._history: list[str] = []

    # ------------------------------------------------------------------ helpers
    def task_names(self) -> list[str]:
        """All ScienceWorld task names the engine knows."""
        if self._names is None:
            self._names = list(self._engine.get_task_names())
        return list(self._names)

    def variations(self, task_name: str, split: str) -> list[int]:
        """The variation indices of `task_name` in `split` (train/dev/test/heldout)."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; expected one of {SPLITS}")
        self._load(task_name, 0, "", gold=False)
        out = list(getattr(self._server, _SPLIT_METHOD[split])())
        self._task = None  # whatever was running is gone
        return out

    def _load(self, task_name: str, variation: int, simplifications: str, gold: bool) -> None:
        names = self.task_names()
        if task_name not in names:
            raise ValueError(f"ScienceWorld task_name={task_name!r} is unknown; expected one of {names}")
        try:
            self._engine.load(task_name, int(variation), simplifications, generateGoldPath=gold)
        except ValueError as e:
            raise ValueError(f"ScienceWorld load({task_name!r}, {variation}, {simplifications!r}): {e}") from e

    def _raw_score(self) -> float:
        return float(self._server.getScore())

    def admissible_actions(self) -> list[str]:
        """The engine's valid action-object combinations in the current state (slow-ish)."""
        self._require_reset()
        return list(self._server.getValidActionObjectCombinations())

    def _require_reset(self) -> None:
        if self._task is None:
            raise RuntimeError("ScienceWorldEnv: call reset(task) before step/expert_actions")

    def _info(self) -> dict:
        info = {
            "raw_score": self._last_raw,  # engine score, 0..100 (negative on failure)
            "moves": int(self._server.getNumMoves()),
            "task_description": self._task_desc,
            "task_name": self._task.payload["task_name"],
            "variation": int(self._task.payload["variation"]),
        }
        if self.with_admissible:
            info["admissible_actions"] = self.admissible_actions()
        return info_defaults(info, won=self._won, score=self._score)

    # ------------------------------------------------------------------ protocol
    def _reset(self, task: Task) -> tuple[str, dict]:
        """Load `task` (payload: task_name, variation, optional simplifications) in the running JVM."""
        if not isinstance(task, Task) or task.env != ENV_NAME:
            raise ValueError(f"task={task!r}; expected a Task with env='scienceworld' (see load_tasks)")
        p = task.payload
        if "task_name" not in p or "variation" not in p:
            raise ValueError(f"task {task.task_id!r} payload={p!r}; it needs 'task_name' and 'variation'")
        simp = p.get("simplifications", self.simplifications)
        self._load(p["task_name"], p["variation"], simp, gold=self.gold_path)
        self._task = task
        self._gold = list(self._engine.get_gold_action_sequence()) if self.gold_path else None
        self._history = []
        self._task_desc = str(self._server.freeActionTaskDesc()).replace("Task Description:", "").strip()
        self._last_raw = 0.0
        self._score, self._won, self._done = 0.0, False, False
        obs = f"{self._server.freeActionLook()}\n{self._task_desc}".strip()
        return obs, self._info()

    def _step(self, action: str) -> StepResult:
        """Send `action` to the simulator; unknown actions get the engine's own answer."""
        self._require_reset()
        if not isinstance(action, str):
            raise TypeError(f"action={action!r}; expected a str")
        if self._done:
            return StepResult("The episode is over.", 0.0, True, self._info())
        action = action.strip()
        obs = str(self._server.step(action))
        self._history.append(action)
        raw = self._raw_score()
        completed = bool(self._server.getCompleted())
        moves = int(self._server.getNumMoves())
        self._last_raw = round(100 * raw)
        old = self._score
        self._score = min(max(raw, 0.0), 1.0)
        self._won = raw >= 1.0 - 1e-6
        self._done = (completed or raw < 0 or self._won
                      or (self.step_limit is not None and moves >= self.step_limit))
        return StepResult(obs, self._score - old, self._done, self._info())

    def expert_actions(self) -> Sequence[str] | None:
        """The rest of the gold path if every action so far followed it, else None."""
        self._require_reset()
        if self._gold is None or self._won:
            return [] if self._won else None
        k = len(self._history)
        if self._history == self._gold[:k]:
            return list(self._gold[k:])
        return None

    def gold_actions(self) -> list[str] | None:
        """The gold action sequence from the start of the current task (None without gold_path)."""
        self._require_reset()
        return None if self._gold is None else list(self._gold)

    def close(self) -> None:
        """Stop the JVM."""
        _close_engine(getattr(self, "_engine", None))
        self._engine = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


def load_tasks(split: str = "train", n: int | None = None, seed: int = 0,
               task_names: Sequence[str] | None = None, simplifications: str | None = None,
               env: ScienceWorldEnv | None = None) -> list[Task]:
    """ScienceWorld tasks of `split`: every (task_name, variation) or `n` of them, spread evenly
    over task names (seeded shuffle of variations, round-robin over names)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    if n is not None and (not isinstance(n, int) or n < 0):
        raise ValueError(f"n={n!r}; expected a non-negative int or None (all)")
    own = env is None
    if own:
        env = ScienceWorldEnv(gold_path=False)
    try:
        all_names = env.task_names()
        names = list(task_names) if task_names is not None else all_names
        bad = [t for t in names if t not in all_names]
        if bad:
            raise ValueError(f"task_names has unknown {bad}; expected names from {all_names}")
        per_name = {}
        for name in names:
            vs = env.variations(name, split)
            random.Random(f"sciworld-{seed}-{split}-{name}").shuffle(vs)
            per_name[name] = vs
    finally:
        if own:
            env.close()
    order: list[tuple[str, int]] = []
    depth = 0
    while any(depth < len(v) for v in per_name.values()):
        for name in names:
            if depth < len(per_name[name]):
                order.append((name, per_name[name][depth]))
        depth += 1
        if n is not None and len(order) >= n:
            break
    if n is not None:
        order = order[:n]
    tasks = []
    for name, var in order:
        payload = {"task_name": name, "variation": int(var)}
        if simplifications is not None:
            payload["simplifications"] = simplifications
        tasks.append(Task(env=ENV_NAME, task_id=f"sciworld-{name}-{var}", task_type=name,
                          split="heldout" if split == "heldout" else split, payload=payload))
    return tasks
