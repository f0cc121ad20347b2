"""TextWorldExpress (the `textworld_express` package, a Scala engine behind py4j) as a TextEnv.

Games: cookingworld, twc, coin, mapreader, arithmetic, sorting, simonsays, peckingorder. A task is
(game, generation params, fold, seed); the engine keeps separate seed ranges per fold
(train 0-999, dev 10000-10999, test 20000-20999) and, for some games, separate object sets.
Splits: "train" -> train, "dev" -> dev, "test" and "heldout" -> test. Won when the engine
reports task success; done on success, failure or `step_limit` steps. Expert: the gold path.
One JVM per env object, reused across resets.
"""
from __future__ import annotations

import contextlib
import random
import time
from typing import Mapping, Sequence

from pilotrl_jax.envs.base import StepResult, Task, TimedEnv, info_defaults

ENV_NAME = "twx"
GAMES = ("cookingworld", "twc", "coin", "mapreader", "arithmetic", "sorting", "simonsays",
         "peckingorder")
SPLITS = ("train", "dev", "test", "heldout")
_FOLD = {"train": "train", "dev": "dev", "test": "test", "heldout": "test"}
# Small worlds (short gold paths) for tests and quick experiments; "" means the engine defaults.
SMALL_PARAMS = {
    "cookingworld": "numLocations=1,numIngredients=2,numDistractorItems=2,includeDoors=0,limitInventorySize=0",
    "twc": "numLocations=1,numItemsToPutAway=2,includeDoors=0,limitInventorySize=0",
    "coin": "numLocations=3,numDistractorItems=2,includeDoors=0,limitInventorySize=0",
}


def check_params(params: str) -> str:
    """Validate a TWX generation string "key=int,key=int" (the engine silently ignores typos)."""
    if not isinstance(params, str):
        raise ValueError(f"params={params!r}; expected a str like 'numLocations=3,includeDoors=0'")
    for part in filter(None, (p.strip() for p in params.split(","))):
        key, eq, val = part.partition("=")
        if not eq or not key.strip() or not val.strip().lstrip("-").isdigit():
            raise ValueError(f"params={params!r}: {part!r} is not 'key=integer' "
                             "(e.g. 'numLocations=3,includeDoors=0')")
    return params.replace(" ", "")


def _start_engine(jar_path: str | None = None):
    """Start the TextWorldExpress JVM (a fraction of a second) and return the package's wrapper."""
    try:
        from textworld_express import TextWorldExpressEnv as _Engine
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("TWX needs the `textworld-express` package (and Java >= 11): "
                          "pip install textworld-express") from e
    return _Engine(serverPath=jar_path, envStepLimit=10**9)


class TWXEnv(TimedEnv):
    """TextWorldExpress behind the TextEnv protocol; one JVM reused across resets.

    `step_limit`: done after this many steps (None: only the engine ends episodes).
    `gold_path`: generate the gold action sequence at reset (cheap; needed by expert_actions()).
    Admissible actions come with every info (the engine lists them for free).
    """

    def __init__(self, step_limit: int | None = 100, gold_path: bool = True, jar_path: str | None = None):
        if step_limit is not None and (not isinstance(step_limit, int) or step_limit < 1):
            raise ValueError(f"step_limit={step_limit!r}; expected a positive int or None")
        self.step_limit = step_limit
        self.gold_path = bool(gold_path)
        t = time.perf_counter()
        self._engine = _start_engine(jar_path)
        self.startup_seconds = time.perf_counter() - t
        # cumulative wall-clock seconds and counts, for benchmarks and logs
        self.timings = {"startup_s": self.startup_seconds, "reset_s": 0.0, "step_s": 0.0,
                        "n_reset": 0, "n_step": 0}
        self._loaded: tuple[str, str] | None = None
        self._task: Task | None = None
        self._gold: list[str] | None = None
        self._history: list[str] = []
        self._seed_cache: dict[tuple[str, str], list[int]] = {}

    def _load(self, game: str, params: str) -> None:
        if game not in GAMES:
            raise ValueError(f"TWX game={game!r}; expected one of {GAMES}")
        params = check_params(params)
        if self._loaded != (game, params):
            self._engine.load(game, params)
            self._loaded = (game, params)

    def seeds(self, game: str, split: str, params: str = "") -> list[int]:
        """The engine's valid seeds of `game` for `split` (train/dev/test/heldout)."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; expected one of {SPLITS}")
        fold = _FOLD[split]
        if (game, fold) not in self._seed_cache:
            self._load(game, params)
            fn = {"train": self._engine.getValidSeedsTrain, "dev": self._engine.getValidSeedsDev,
                  "test": self._engine.getValidSeedsTest}[fold]
            self._seed_cache[(game, fold)] = [int(s) for s in fn()]
        return list(self._seed_cache[(game, fold)])

    def _require_reset(self) -> None:
        if self._task is None:
            raise RuntimeError("TWXEnv: call reset(task) before step/expert_actions")

    def _info(self, raw: dict) -> dict:
        return info_defaults(
            {
                "admissible_actions": sorted(raw.get("validActions", [])),
                "task_description": self._task_desc,
                "steps": len(self._history),
                "game": self._task.payload["game"],
                "seed": int(self._task.payload["seed"]),
            },
            won=self._won, score=self._score,
        )

    def _reset(self, task: Task) -> tuple[str, dict]:
        """Generate the game of `task` (payload: game, seed, fold, params) and return its start."""
        if not isinstance(task, Task) or task.env != ENV_NAME:
            raise ValueError(f"task={task!r}; expected a Task with env='twx' (see load_tasks)")
        p = task.payload
        if "game" not in p or "seed" not in p:
            raise ValueError(f"task {task.task_id!r} payload={p!r}; it needs 'game' and 'seed'")
        fold = p.get("fold", "train")
        if fold not in ("train", "dev", "test"):
            raise ValueError(f"task {task.task_id!r} fold={fold!r}; expected train, dev or test")
        params = p.get("params", "")
        self._load(p["game"], params)
        if int(p["seed"]) not in set(self.seeds(p["game"], fold, params)):
            raise ValueError(f"task {task.task_id!r}: seed {p['seed']} is not a {fold} seed of "
                             f"{p['game']}; use load_tasks or TWXEnv.seeds(game, fold)")
        obs, raw = self._engine.reset(seed=int(p["seed"]), gameFold=fold,
                                      generateGoldPath=self.gold_path)
        self._task = task
        self._gold = [str(a) for a in self._engine.getGoldActionSequence()] if self.gold_path else None
        self._history = []
        self._task_desc = str(raw.get("taskDescription", "")).strip()
        self._score, self._won, self._done = 0.0, False, False
        return f"{obs.strip()}\n{self._task_desc}".strip(), self._info(raw)

    def _step(self, action: str) -> StepResult:
        """Send `action` to the engine; unknown actions get the engine's own answer."""
        self._require_reset()
        if not isinstance(action, str):
            raise TypeError(f"action={action!r}; expected a str")
        if self._done:
            info = self._info({})
            info["admissible_actions"] = []
            return StepResult("The episode is over.", 0.0, True, info)
        action = action.strip()
        obs, _, _, raw = self._engine.step(action)
        self._history.append(action)
        old = self._score
        self._score = min(max(float(raw.get("score", 0.0)), 0.0), 1.0)
        self._won = bool(raw.get("tasksuccess", False))
        if self._won:
            self._score = 1.0
        failed = bool(raw.get("taskfailure", False))
        self._done = (self._won or failed
                      or (self.step_limit is not None and len(self._history) >= self.step_limit))
        info = self._info(raw)
        info["task_failure"] = failed
        return StepResult(str(obs), self._score - old, self._done, info)

    def expert_actions(self) -> Sequence[str] | None:
        """The rest of the gold path if every action so far followed it, else None."""
        self._require_reset()
        if self._won:
            return []
        if self._gold is None:
            return None
        k = len(self._history)
        return list(self._gold[k:]) if self._history == self._gold[:k] else None

    def close(self) -> None:
        """Stop the JVM."""
        engine = getattr(self, "_engine", None)
        if engine is not None:
            with contextlib.suppress(Exception):
                engine.close()
            with contextlib.suppress(Exception):
                engine.close = lambda: None  # its __del__ would close again
        self._engine = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


def load_tasks(split: str = "train", n: int | None = None, seed: int = 0,
               games: Sequence[str] = ("cookingworld", "twc", "coin"),
               params: Mapping[str, str] | str | None = None,
               env: TWXEnv | None = None) -> list[Task]:
    """TWX tasks of `split`: `n` (default: all) (game, seed) pairs, round-robin over `games`,
    seeds drawn without replacement from the fold's seed list by a `seed`-ed shuffle.
    `params`: one generation string for all games, a {game: params} dict, or "small"
    (SMALL_PARAMS: one-room worlds with short gold paths)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    if n is not None and (not isinstance(n, int) or n < 0):
        raise ValueError(f"n={n!r}; expected a non-negative int or None (all)")
    games = [games] if isinstance(games, str) else list(games)
    bad = [g for g in games if g not in GAMES]
    if bad or not games:
        raise ValueError(f"games={games!r}; expected a non-empty subset of {GAMES}")
    if params == "small":
        per_game = {g: SMALL_PARAMS.get(g, "") for g in games}
    elif isinstance(params, Mapping):
        per_game = {g: check_params(params.get(g, "")) for g in games}
    else:
        per_game = {g: check_params(params or "") for g in games}
    own = env is None
    if own:
        env = TWXEnv(gold_path=False)
    try:
        pools = {}
        for g in games:
            s = env.seeds(g, split, per_game[g])
            random.Random(f"twx-{seed}-{split}-{g}").shuffle(s)
            pools[g] = s
    finally:
        if own:
            env.close()
    fold = _FOLD[split]
    total = sum(len(v) for v in pools.values())
    n = total if n is None else min(n, total)
    tasks: list[Task] = []
    depth = 0
    while len(tasks) < n:
        for g in games:
            if depth < len(pools[g]) and len(tasks) < n:
                s = pools[g][depth]
                tasks.append(Task(
                    env=ENV_NAME, task_id=f"twx-{g}-{fold}-{s}", task_type=g,
                    split="heldout" if split == "heldout" else split,
                    payload={"game": g, "seed": int(s), "fold": fold, "params": per_game[g]},
                ))
        depth += 1
    return tasks
