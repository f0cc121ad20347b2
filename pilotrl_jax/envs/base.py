"""The small environment protocol every text environment implements."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Protocol, Sequence, runtime_checkable


@dataclasses.dataclass(frozen=True)
class Task:
    """One task an environment can reset to.

    `env` names the environment family ("alfworld", "scienceworld", "twx", "tiny", "agentgym"),
    `task_id` is unique within the family and split, `task_type` groups tasks for success tables,
    `payload` holds what the family needs to start it (a game file, a variation number...).
    """

    env: str
    task_id: str
    task_type: str = ""
    split: str = "train"
    payload: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class StepResult:
    """What one environment step returns."""

    observation: str
    reward: float
    done: bool
    info: dict  # must hold "won": bool and "score": float in [0, 1]; may hold "admissible_actions"


@runtime_checkable
class TextEnv(Protocol):
    """reset(task) -> (observation, info); step(action) -> StepResult; close()."""

    def reset(self, task: Task) -> tuple[str, dict]:
        """Start `task`; returns the first observation (task description included) and info."""

    def step(self, action: str) -> StepResult:
        """Apply one action string; an invalid action gets the engine's own answer, never raises."""

    def expert_actions(self) -> Sequence[str] | None:
        """A gold/expert action sequence from the current state to success, where the engine has one."""

    def close(self) -> None:
        """Release processes and files."""


class ExpertActions(list):
    """An expert's remaining commands (a list) that may carry its own natural-language plan steps.

    Experts that know more than their command list shows (a search expert knows where it will
    look next, not what it will find) set `plan_steps`; plan writers use them when present.
    `step` (0-based) is the plan step the first command carries out, when the expert knows it.
    """

    def __init__(self, actions=(), plan_steps=None, step=None):
        super().__init__(actions)
        self.plan_steps = None if plan_steps is None else [str(s) for s in plan_steps]
        self.step = None if step is None else int(step)

    def __reduce__(self):  # pickles across ProcessEnv workers with its plan steps
        return (ExpertActions, (list(self), self.plan_steps, self.step))


class EnvError(RuntimeError):
    """An environment crashed or hung; the rollout loop ends that episode with status env_error."""


def info_defaults(info: dict[str, Any] | None, won: bool = False, score: float = 0.0) -> dict:
    """Return a copy of `info` with the protocol's required keys filled in."""
    out = dict(info or {})
    out.setdefault("won", bool(won))
    out.setdefault("score", float(score))
    return out


class TimedEnv:
    """Mixin: public reset/step call the subclass's `_reset`/`_step` and add their time to `self.timings`."""

    timings: dict

    def reset(self, task: Task) -> tuple[str, dict]:
        """Start `task` (see the subclass's `_reset`); time goes to timings['reset_s']."""
        t = time.perf_counter()
        out = self._reset(task)
        self.timings["reset_s"] += time.perf_counter() - t
        self.timings["n_reset"] += 1
        return out

    def step(self, action: str) -> StepResult:
        """Apply one action (see the subclass's `_step`); time goes to timings['step_s']."""
        t = time.perf_counter()
        out = self._step(action)
        self.timings["step_s"] += time.perf_counter() - t
        self.timings["n_step"] += 1
        return out
