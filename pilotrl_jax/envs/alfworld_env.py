"""ALFWorld on its real engine (TextWorld's PDDL environment + ALFWorld's wrappers), offline.

Games come from `pilotrl_jax.envs.alfworld_gen`. The engine stack is the one `AlfredTWEnv`
registers: `PddlEnv` (fast-downward state, twl2 grammar) wrapped by `AlfredDemangler` (names like
"countertop 1") and `AlfredInfos`. The expert is the engine's planner expert: fast-downward
re-plans from the current state (what ALFWorld's `AlfredExpert(expert_type="planner")` returns as
`policy_commands`), computed on demand instead of on every step, on a relevance-pruned copy of
the current state (`alfworld_expert.pruned_problem`: only target objects, the held object and the
receptacles that matter): the plan is executable in the full game and as short, and fast-downward
answers in ~0.05 s instead of seconds (pick_two in a 30-receptacle kitchen took 4-17 s on the full
state).

`expert="search"` gives an expert that knows only what the agent could have seen
(`alfworld_expert.SearchExpert`): it looks for the target where it could be, in the order the room
description lists the receptacles; the planner expert walks straight to the object.

`score="progress"` (ours; default "won") grades unsolved episodes: the info's score is 1 when won,
else 0.5 once the agent has picked up an object of the goal's type (the first of the goal's two
conditions, in the spirit of ALFRED's goal-condition success), else 0. With `reward.outcome="score"`
RL then also learns from groups in which no episode won.

Speed: `alfworld_speed.install_engine_speedups()` (on by default, `speedups=True`; installed when
the first such env is made) memoizes the engine's pure text-to-structure functions and copies only
what its text generator changes.
"""
from __future__ import annotations

import os
import re
import threading
import time
from typing import Sequence

from pilotrl_jax.envs.alfworld_expert import SearchExpert, pddl_facts, pruned_problem
from pilotrl_jax.envs.alfworld_speed import LRU, install_engine_speedups
from pilotrl_jax.envs.base import EnvError, StepResult, Task, info_defaults

_BANNER = "-= Welcome to TextWorld, ALFRED! =-"
_PUT_ALIAS = re.compile(r"^put (?P<o>.+?) (?:in/on|in|on|into|onto) (?P<r>.+)$")
EXPERTS = ("planner", "search")
SCORES = ("won", "progress")
_PICK_RE = re.compile(r"^you pick up the (?P<o>[a-z]+) \d+", re.IGNORECASE)

# Every engine (and every planner) loads its own copy of fast-downward's 33 MB shared library: the
# library keeps its state in globals, so textworld copies the file to a temporary directory, loads the
# copy and deletes the file. Nothing ever unloads a copy, so the deleted file stays on disk for the
# life of the process. Building an engine per episode therefore leaked 33 MB of disk an episode (a
# few GB a training step, until the disk was full). Engines and planner libraries are kept in these
# process-wide pools instead: `close()` gives them back and the next env reuses them, so a process
# holds as many copies as it ever had envs open at once.
_POOL_LOCK = threading.Lock()
_ENGINES: list = []
_PLANNER_LIBS: list = []
POOL_STATS = {"engines_built": 0, "planners_built": 0}


def _acquire(pool: list, make, stat: str):
    with _POOL_LOCK:
        if pool:
            return pool.pop()
        POOL_STATS[stat] += 1
    return make()


def _release(pool: list, item) -> None:
    if item is not None:
        with _POOL_LOCK:
            pool.append(item)


def _make_engine():
    """The ALFWorld TextWorld stack (PddlEnv + AlfredDemangler + AlfredInfos)."""
    import textworld
    from textworld.envs import PddlEnv
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

    infos = textworld.EnvInfos(admissible_commands=True, won=True, extras=["gamefile"])
    env = PddlEnv(infos)
    env = AlfredDemangler(env, shuffle=False)
    env = AlfredInfos(env)
    return env


class AlfWorldEnv:
    """An ALFWorld game on the real engine; implements the TextEnv protocol.

    `max_steps` (optional) ends an episode after that many steps with info["truncated"];
    `strip_banner` drops the "-= Welcome to TextWorld, ALFRED! =-" line from the first observation;
    `put_alias` maps the older ALFWorld command "put X in/on Y" to the engine's "move X to Y".
    """

    def __init__(self, max_steps: int | None = None, strip_banner: bool = True, put_alias: bool = True,
                 speedups: bool = True, expert: str = "planner", score: str = "won"):
        if expert not in EXPERTS:
            raise ValueError(f"expert={expert!r}; expected one of {EXPERTS}")
        if score not in SCORES:
            raise ValueError(f"score={score!r}; expected one of {SCORES} (env.kwargs.score)")
        self.expert = expert
        self.score_mode = score
        self._target_word = ""  # the goal object's name as observations write it ("cellphone")
        self._picked_target = False
        self._search = SearchExpert()
        if speedups:
            install_engine_speedups()
        if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
            raise ValueError(f"max_steps={max_steps!r}; expected None or an integer >= 1")
        self.max_steps = max_steps
        self.strip_banner = strip_banner
        self.put_alias = put_alias
        self._env = None
        self._planner_lib = None
        self._plan_cache = LRU(512)
        self._loaded: str | None = None
        self._task: Task | None = None
        self._state = None
        self._won = False
        self._steps = 0
        self.timings = {"load_s": 0.0, "reset_s": 0.0, "step_s": 0.0, "n_load": 0, "n_reset": 0, "n_step": 0}

    # -- protocol -------------------------------------------------------------------------
    def reset(self, task: Task) -> tuple[str, dict]:
        """Load the task's game (cached when it is the same file) and return the intro + goal."""
        if not isinstance(task, Task) or task.env != "alfworld":
            raise ValueError(f"task={task!r}; expected a Task with env='alfworld' (see alfworld_gen.generate_tasks)")
        game_file = task.payload.get("game_file")
        if not game_file or not os.path.exists(game_file):
            raise FileNotFoundError(
                f"task {task.task_id}: payload['game_file']={game_file!r} does not exist; "
                "generate games with `python -m pilotrl_jax.envs.alfworld_gen --out DIR`")
        try:
            if self._env is None:
                self._env = _acquire(_ENGINES, _make_engine, "engines_built")
                self._loaded = None
            if game_file != self._loaded:
                t0 = time.perf_counter()
                self._loaded = None
                self._env.load(game_file)
                self._loaded = game_file
                self.timings["load_s"] += time.perf_counter() - t0
                self.timings["n_load"] += 1
            t0 = time.perf_counter()
            self._state = self._env.reset()
            self.timings["reset_s"] += time.perf_counter() - t0
            self.timings["n_reset"] += 1
        except Exception as e:  # engine failure: the rollout loop reports env_error
            raise EnvError(f"ALFWorld engine failed to start {game_file}: {type(e).__name__}: {e}") from e
        self._task = task
        self._steps = 0
        self._won = bool(self._state["won"])
        self._picked_target = False
        self._target_word = str((task.payload.get("pddl_params") or {}).get("object_target", "")).lower()
        self._search.reset(self._state.feedback)
        obs = self._state.feedback
        if self.strip_banner:
            obs = obs.replace(_BANNER, "").strip()
        return obs, self._info()

    def step(self, action: str) -> StepResult:
        """Apply one command; anything the engine cannot parse gets its answer "Nothing happens."."""
        if self._state is None:
            raise RuntimeError("AlfWorldEnv.step called before reset(task)")
        command = self.normalize(action)
        t0 = time.perf_counter()
        try:
            self._state, _, _ = self._env.step(command)
        except Exception as e:
            raise EnvError(f"ALFWorld engine failed on {command!r} in {self._loaded}: {type(e).__name__}: {e}") from e
        self.timings["step_s"] += time.perf_counter() - t0
        self.timings["n_step"] += 1
        self._steps += 1
        if self.expert == "search":
            self._search.note_seen(self._facts())
        was_won = self._won
        self._won = self._won or bool(self._state["won"])
        if self.score_mode == "progress" and not self._picked_target:
            m = _PICK_RE.match((self._state.feedback or "").strip())
            self._picked_target = bool(m) and m.group("o").lower() == self._target_word
        reward = 1.0 if (self._won and not was_won) else 0.0
        info = self._info()
        truncated = self.max_steps is not None and self._steps >= self.max_steps and not self._won
        info["truncated"] = truncated
        return StepResult(observation=self._state.feedback, reward=reward, done=self._won or truncated, info=info)

    def expert_actions(self) -> Sequence[str] | None:
        """Planner expert from the current state: the commands to success ([] if won, None if no plan)."""
        if self._state is None:
            raise RuntimeError("AlfWorldEnv.expert_actions called before reset(task)")
        if self._won:
            return []
        if self.expert == "search":
            try:
                return self._search.actions(self._facts(), self._names(), self._task, self._planner_actions)
            except Exception as e:
                raise EnvError(f"ALFWorld search expert failed in {self._loaded}: {type(e).__name__}: {e}") from e
        return self._planner_actions()

    def _planner_actions(self) -> list | None:
        """The planner's commands from the current state (privileged: it knows where everything is)."""
        inner = self._env.unwrapped
        try:
            problem = pruned_problem(inner._pddl_state, inner._game_data["pddl_problem"], self._task)
            if problem not in self._plan_cache:
                from textworld.envs.pddl.logic import PddlState
                import fast_downward

                if self._planner_lib is None:  # a private copy: the game's copy holds the game state
                    self._planner_lib = _acquire(_PLANNER_LIBS, fast_downward.load_lib, "planners_built")
                state = PddlState(self._planner_lib, problem, inner._logic)
                self._plan_cache[problem] = list(state.replan(inner._entity_infos))
            plan = self._plan_cache.get_or(problem, list)
        except Exception as e:
            raise EnvError(f"ALFWorld planner failed in {self._loaded}: {type(e).__name__}: {e}") from e
        return list(plan) if plan else None

    def _facts(self) -> list:
        """Current PDDL facts as (name, [argument names]) (lower-case ids)."""
        return pddl_facts(self._env.unwrapped._pddl_state)

    def _names(self) -> dict:
        """PDDL ids (lower-case) -> the names observations use ("countertop 1")."""
        return {k.lower(): v.name for k, v in self._env.unwrapped._entity_infos.items()}

    def close(self) -> None:
        """Give the engine and planner back to the process-wide pools (see `_ENGINES`), for reuse.

        Their fast-downward library copies are never dlclose'd: textworld keeps ctypes handles into
        them until garbage collection, and unloading early crashes the interpreter at exit.
        """
        _release(_ENGINES, self._env)
        _release(_PLANNER_LIBS, self._planner_lib)
        self._planner_lib = None
        self._env = None
        self._loaded = None
        self._state = None

    # -- helpers --------------------------------------------------------------------------
    def normalize(self, action: str) -> str:
        """Lower-case, collapse whitespace, drop a trailing period; map "put X in/on Y" to "move X to Y"."""
        if not isinstance(action, str):
            action = "" if action is None else str(action)
        cmd = " ".join(action.strip().lower().split()).rstrip(".").strip()
        if self.put_alias:
            m = _PUT_ALIAS.match(cmd)
            if m:
                cmd = f"move {m.group('o')} to {m.group('r')}"
        return cmd

    @property
    def goal(self) -> str:
        """The task's goal sentence (from the intro's "Your task is to: ...")."""
        if self._task is None:
            return ""
        return self._task.payload.get("goal", "")

    def _info(self) -> dict:
        """Protocol info: won/score, admissible actions, task metadata."""
        won = self._won
        return info_defaults({
            "admissible_actions": list(self._state["admissible_commands"]),
            "task_type": self._task.task_type,
            "task_id": self._task.task_id,
            "goal": self.goal,
            "gamefile": self._loaded,
            "steps": self._steps,
        }, won=won, score=1.0 if won else (0.5 if self.score_mode == "progress" and self._picked_target else 0.0))



# -- expert plan -> natural-language plan steps ------------------------------------------------
def _strip_num(name: str) -> str:
    """'apple 2' -> 'apple'."""
    parts = name.split()
    return " ".join(parts[:-1]) if len(parts) > 1 and parts[-1].isdigit() else name


_ACTION_RES = [
    ("goto", re.compile(r"^go to (?P<r>.+)$")),
    ("open", re.compile(r"^open (?P<r>.+)$")),
    ("close", re.compile(r"^close (?P<r>.+)$")),
    ("take", re.compile(r"^take (?P<o>.+?) from (?P<r>.+)$")),
    ("put", re.compile(r"^(?:move (?P<o>.+?) to|put (?P<o2>.+?) (?:in/on|in|on)) (?P<r>.+)$")),
    ("heat", re.compile(r"^heat (?P<o>.+?) with (?P<r>.+)$")),
    ("cool", re.compile(r"^cool (?P<o>.+?) with (?P<r>.+)$")),
    ("clean", re.compile(r"^clean (?P<o>.+?) with (?P<r>.+)$")),
    ("slice", re.compile(r"^slice (?P<o>.+?) with (?P<r>.+)$")),
    ("use", re.compile(r"^use (?P<o>.+)$")),
    ("examine", re.compile(r"^examine (?P<o>.+)$")),
]


def _parse(action: str):
    """(kind, groups) for an ALFWorld command; ('other', {}) when unknown."""
    a = " ".join(action.strip().lower().split())
    for kind, rx in _ACTION_RES:
        m = rx.match(a)
        if m:
            g = {k: v for k, v in m.groupdict().items() if v}
            if "o2" in g:
                g["o"] = g.pop("o2")
            return kind, g
    return "other", {"a": a}


def expert_plan_steps(actions: Sequence[str]) -> list[str]:
    """Turn an expert command sequence into short natural-language plan steps (no "Step k:" prefix).

    E.g. go to countertop 1 / take apple 1 from countertop 1 / go to microwave 1 /
    heat apple 1 with microwave 1 / go to diningtable 1 / move apple 1 to diningtable 1 ->
    ["Go to countertop 1 and take the apple.", "Heat the apple with microwave 1.",
     "Put the apple in/on diningtable 1."].
    """
    if isinstance(actions, str):
        raise ValueError("actions is a single string; expected a list of commands such as ['go to desk 1', ...]")
    steps: list[str] = []
    taken: set[str] = set()
    pending_go: str | None = None  # receptacle we went to, not yet described
    opened: str | None = None  # receptacle opened after that go-to
    last_taken: str | None = None

    def flush():
        nonlocal pending_go, opened
        if pending_go is not None:
            steps.append(f"Go to {pending_go} and open it." if opened == pending_go else f"Go to {pending_go}.")
        elif opened is not None:
            steps.append(f"Open {opened}.")
        pending_go, opened = None, None

    for action in actions:
        kind, g = _parse(str(action))
        if kind == "goto":
            flush()
            pending_go = g["r"]
        elif kind == "open":
            if pending_go is None and opened is not None:
                flush()
            opened = g["r"]
        elif kind == "close" or (kind == "other" and g["a"] in ("look", "inventory", "help")):
            continue
        elif kind == "take":
            obj = _strip_num(g["o"])
            art = "another" if obj in taken else "the"
            taken.add(obj)
            last_taken = obj
            where = g["r"]
            if opened == where:
                steps.append(f"Go to {where}, open it, and take {art} {obj}." if pending_go == where
                             else f"Open {where} and take {art} {obj}.")
            else:
                steps.append(f"Go to {where} and take {art} {obj}.")
            pending_go, opened = None, None
        elif kind == "put":
            obj, where = _strip_num(g["o"]), g["r"]
            if opened == where:
                steps.append(f"Open {where} and put the {obj} in/on it.")
            else:
                steps.append(f"Put the {obj} in/on {where}.")
            pending_go, opened = None, None
        elif kind in ("heat", "cool", "clean"):
            steps.append(f"{kind.capitalize()} the {_strip_num(g['o'])} with {g['r']}.")
            pending_go, opened = None, None
        elif kind == "slice":
            steps.append(f"Slice the {_strip_num(g['o'])} with the {_strip_num(g['r'])}.")
            pending_go, opened = None, None
        elif kind == "use":
            what = f" to look at the {last_taken}" if last_taken else ""
            where = f"Go to {pending_go} and turn on" if pending_go else "Turn on"
            steps.append(f"{where} the {_strip_num(g['o'])}{what}.")
            pending_go, opened = None, None
        elif kind == "examine":
            flush()
            steps.append(f"Examine the {g['o']}.")
        else:
            flush()
            steps.append(f"{g['a'][:1].upper()}{g['a'][1:]}.")
    flush()
    return steps
