"""A tiny pure-Python text world for fast tests: a few rooms, items and containers.

Goals are "put the key in the box" (task_type "put") or "bring the apple to the garden"
(task_type "bring"). The whole game is in `Task.payload`, so a task list is plain data that
pickles and round-trips through JSON. Steps take microseconds; `expert_actions()` runs a BFS
over the (small) state space from the current state.
"""
from __future__ import annotations

import collections
import hashlib
import os
import random
import time
from typing import Sequence

from pilotrl_jax.envs.base import StepResult, Task, info_defaults

ENV_NAME = "tiny"
INVALID = "Nothing happens."
ROOMS = ("kitchen", "hallway", "garden", "bedroom", "study", "cellar")
ITEMS = ("key", "apple", "book", "coin", "lamp", "mug", "sock", "pen")
CONTAINERS = ("box", "drawer", "basket", "chest")
TASK_TYPES = ("put", "bring")
SPLITS = ("train", "heldout")


def _stable_hash(text: str) -> int:
    """Process-independent hash (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def goal_split(goal: dict) -> str:
    """Which split a goal belongs to: about one goal pair in five is held out (unseen goals)."""
    key = f"{goal['type']}:{goal['item']}:{goal['target']}"
    return "heldout" if _stable_hash(key) % 5 == 0 else "train"


def _random_game(rng: random.Random, task_type: str) -> dict:
    """Draw one game layout and goal."""
    n_rooms = rng.randint(3, 4)
    rooms = rng.sample(ROOMS, n_rooms)
    # a random spanning tree keeps every room reachable, plus maybe one extra edge
    edges = []
    for i in range(1, n_rooms):
        edges.append(sorted([rooms[i], rooms[rng.randrange(i)]]))
    if n_rooms > 3 and rng.random() < 0.5:
        a, b = rng.sample(rooms, 2)
        if sorted([a, b]) not in edges:
            edges.append(sorted([a, b]))
    containers = {}
    for c in rng.sample(CONTAINERS, 2):
        containers[c] = {"room": rng.choice(rooms), "open": rng.random() < 0.5}
    items = {}
    for it in rng.sample(ITEMS, 3):
        where = rng.choice(rooms + list(containers))
        items[it] = where
    item = rng.choice(sorted(items))
    if task_type == "put":
        choices = [c for c in containers if items[item] != c]
        target = rng.choice(sorted(choices))
    else:
        here = items[item] if items[item] in rooms else containers[items[item]]["room"]
        target = rng.choice(sorted(r for r in rooms if r != here))
    start = rng.choice(rooms)
    return {
        "rooms": sorted(rooms),
        "edges": sorted(edges),
        "containers": containers,
        "items": items,
        "start": start,
        "goal": {"type": task_type, "item": item, "target": target},
    }


def goal_text(goal: dict) -> str:
    """The task sentence for a goal."""
    if goal["type"] == "put":
        return f"put the {goal['item']} in the {goal['target']}"
    return f"bring the {goal['item']} to the {goal['target']}"


def make_tasks(split: str = "train", n: int = 32, seed: int = 0) -> list[Task]:
    """`n` deterministic tiny tasks of `split` ("train" or "heldout"); goals never cross splits."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    if n is None or n < 0:
        raise ValueError(f"n={n!r}; expected a non-negative int")
    tasks: list[Task] = []
    k = 0
    while len(tasks) < n:
        rng = random.Random(f"tiny-{seed}-{k}")
        task_type = TASK_TYPES[k % len(TASK_TYPES)]
        game = _random_game(rng, task_type)
        k += 1
        if goal_split(game["goal"]) != split:
            continue
        tasks.append(
            Task(env=ENV_NAME, task_id=f"tiny-{split}-{seed}-{k - 1}", task_type=task_type,
                 split=split, payload=game)
        )
        if k > 1000 * (n + 1):  # pragma: no cover - guards against an impossible split
            raise RuntimeError(f"could not draw {n} tiny tasks for split {split!r}")
    return tasks


# State: (agent_room, tuple(sorted (item, location))), tuple(sorted (container, open)))
_State = tuple


class TinyEnv:
    """A deterministic text world with admissible actions, partial score and a BFS expert.

    `max_steps`: done (not won) after this many steps (None: no limit).
    `fault_injection`: accept the test-only actions "__sleep <seconds>" and "__crash"
    (hard exit of the process) to exercise process isolation; off by default.
    """

    def __init__(self, max_steps: int | None = 50, fault_injection: bool = False):
        if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
            raise ValueError(f"max_steps={max_steps!r}; expected a positive int or None")
        self.max_steps = max_steps
        self.fault_injection = bool(fault_injection)
        self._game: dict | None = None
        self._task: Task | None = None

    # ----------------------------------------------------------------- state helpers
    def _initial_state(self, game: dict) -> _State:
        items = tuple(sorted(game["items"].items()))
        opens = tuple(sorted((c, bool(v["open"])) for c, v in game["containers"].items()))
        return (game["start"], items, opens)

    def _neighbours(self, room: str) -> list[str]:
        out = []
        for a, b in self._game["edges"]:
            if a == room:
                out.append(b)
            elif b == room:
                out.append(a)
        return sorted(out)

    def _is_won(self, state: _State) -> bool:
        goal = self._game["goal"]
        room, items, _ = state
        loc = dict(items)[goal["item"]]
        if goal["type"] == "put":
            return loc == goal["target"]
        return loc == goal["target"]  # "bring": dropped in the target room

    def _transitions(self, state: _State) -> list[tuple[str, _State, str]]:
        """Every admissible (action, next_state, observation) from `state`, sorted by action."""
        room, items, opens = state
        items_d, opens_d = dict(items), dict(opens)
        conts = self._game["containers"]
        here_conts = sorted(c for c in conts if conts[c]["room"] == room)
        out: list[tuple[str, _State, str]] = []

        def with_items(d):
            return (room, tuple(sorted(d.items())), opens)

        for r in self._neighbours(room):
            out.append((f"go to {r}", (r, items, opens), self._describe((r, items, opens))))
        for it, loc in sorted(items_d.items()):
            visible = loc == room or (loc in here_conts and opens_d[loc])
            if visible:
                d = dict(items_d)
                d[it] = "inventory"
                src = "" if loc == room else f" from the {loc}"
                out.append((f"take {it}" if loc == room else f"take {it} from {loc}",
                            with_items(d), f"You take the {it}{src}."))
            if loc == "inventory":
                d = dict(items_d)
                d[it] = room
                out.append((f"drop {it}", with_items(d), f"You drop the {it} in the {room}."))
                for c in here_conts:
                    if opens_d[c]:
                        d = dict(items_d)
                        d[it] = c
                        out.append((f"put {it} in {c}", with_items(d),
                                    f"You put the {it} in the {c}."))
        for c in here_conts:
            o = dict(opens_d)
            o[c] = not opens_d[c]
            new = (room, items, tuple(sorted(o.items())))
            if opens_d[c]:
                out.append((f"close {c}", new, f"You close the {c}."))
            else:
                inside = sorted(i for i, l in items_d.items() if l == c)
                what = ", ".join(f"a {i}" for i in inside) if inside else "nothing"
                out.append((f"open {c}", new, f"You open the {c}. In it you see {what}."))
        out.append(("look", state, self._describe(state)))
        out.append(("inventory", state, self._inventory_text(state)))
        out.sort(key=lambda t: t[0])
        return out

    def _describe(self, state: _State) -> str:
        room, items, opens = state
        items_d, opens_d = dict(items), dict(opens)
        conts = self._game["containers"]
        parts = [f"You are in the {room}."]
        loose = sorted(i for i, l in items_d.items() if l == room)
        if loose:
            parts.append("You see " + ", ".join(f"a {i}" for i in loose) + ".")
        for c in sorted(c for c in conts if conts[c]["room"] == room):
            if opens_d[c]:
                inside = sorted(i for i, l in items_d.items() if l == c)
                what = ", ".join(f"a {i}" for i in inside) if inside else "nothing"
                parts.append(f"There is an open {c} with {what} in it.")
            else:
                parts.append(f"There is a closed {c}.")
        parts.append("Exits: " + ", ".join(self._neighbours(room)) + ".")
        return " ".join(parts)

    def _inventory_text(self, state: _State) -> str:
        held = sorted(i for i, l in dict(state[1]).items() if l == "inventory")
        if not held:
            return "You are carrying nothing."
        return "You are carrying: " + ", ".join(f"a {i}" for i in held) + "."

    def _score_of(self, state: _State) -> float:
        if self._is_won(state):
            return 1.0
        return 0.5 if dict(state[1])[self._game["goal"]["item"]] == "inventory" else 0.0

    def _info(self) -> dict:
        return info_defaults(
            {
                "admissible_actions": self.admissible_actions(),
                "task_description": goal_text(self._game["goal"]),
                "steps": self._steps,
            },
            won=self._won,
            score=self._score,
        )

    # ----------------------------------------------------------------- protocol
    def reset(self, task: Task) -> tuple[str, dict]:
        """Start `task` (a tiny Task); returns the room description plus the goal."""
        if not isinstance(task, Task) or task.env != ENV_NAME:
            raise ValueError(f"task={task!r}; expected a Task with env='tiny' (see make_tasks)")
        game = task.payload
        for key in ("rooms", "edges", "containers", "items", "start", "goal"):
            if key not in game:
                raise ValueError(f"task {task.task_id!r} payload lacks {key!r}; build it with make_tasks")
        self._task, self._game = task, game
        self._state = self._initial_state(game)
        self._steps = 0
        self._won = False
        self._score = self._score_of(self._state)
        self._done = False
        obs = f"{self._describe(self._state)}\nYour task is to: {goal_text(game['goal'])}."
        return obs, self._info()

    def _require_reset(self):
        if self._game is None:
            raise RuntimeError("TinyEnv.step/expert_actions called before reset(task); call reset first")

    def admissible_actions(self) -> list[str]:
        """Every action that changes something or reports something in the current state."""
        self._require_reset()
        return [a for a, _, _ in self._transitions(self._state)]

    def step(self, action: str) -> StepResult:
        """Apply `action`; an unknown or impossible action answers "Nothing happens."."""
        self._require_reset()
        if not isinstance(action, str):
            raise TypeError(f"action={action!r}; expected a str")
        act = " ".join(action.strip().lower().split())
        if self.fault_injection and act.startswith("__"):
            if act == "__crash":
                os._exit(13)
            if act.startswith("__sleep"):
                time.sleep(float(act.split()[1]))
                return StepResult("You slept.", 0.0, self._done, self._info())
        if self._done:
            return StepResult("The episode is over.", 0.0, True, self._info())
        self._steps += 1
        obs = INVALID
        for a, nxt, text in self._transitions(self._state):
            if a == act:
                self._state, obs = nxt, text
                break
        old = self._score
        self._won = self._is_won(self._state)
        self._score = max(self._score, self._score_of(self._state))
        if self._won:
            obs += " You won!"
        self._done = self._won or (self.max_steps is not None and self._steps >= self.max_steps)
        return StepResult(obs, self._score - old, self._done, self._info())

    def expert_actions(self, max_depth: int = 30) -> Sequence[str] | None:
        """A shortest action sequence from the current state to a win (BFS), or None."""
        self._require_reset()
        if self._is_won(self._state):
            return []
        start = self._state
        parent: dict = {start: None}
        queue = collections.deque([(start, 0)])
        while queue:
            s, d = queue.popleft()
            if d >= max_depth:
                continue
            for a, nxt, _ in self._transitions(s):
                if a in ("look", "inventory") or a.startswith("close ") or nxt in parent:
                    continue
                parent[nxt] = (s, a)
                if self._is_won(nxt):
                    path = []
                    cur = nxt
                    while parent[cur] is not None:
                        cur, act = parent[cur]
                        path.append(act)
                    return path[::-1]
                queue.append((nxt, d + 1))
        return None

    def close(self) -> None:
        """Nothing to release."""
        self._game = None
