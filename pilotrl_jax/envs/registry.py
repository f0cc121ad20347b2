"""One entry point for every environment family: make_env(name, ...) and load_tasks(name, split, ...).

Families: "tiny", "scienceworld", "twx", "agentgym", "alfworld". Engines are imported lazily, so
asking for "tiny" never starts a JVM or imports ALFWorld. `make_env(..., isolate=True)` runs the
env in its own process (`ProcessEnv`: crashes and hangs become EnvError, `restart()` revives it).
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from pilotrl_jax.envs.base import Task, TextEnv

# name -> (module, env class, task loader)
_FAMILIES: dict[str, tuple[str, str, str]] = {
    "tiny": ("pilotrl_jax.envs.tiny", "TinyEnv", "make_tasks"),
    "scienceworld": ("pilotrl_jax.envs.scienceworld_env", "ScienceWorldEnv", "load_tasks"),
    "twx": ("pilotrl_jax.envs.twx_env", "TWXEnv", "load_tasks"),
    "agentgym": ("pilotrl_jax.envs.agentgym", "AgentGymEnv", "make_tasks"),
    "alfworld": ("pilotrl_jax.envs.alfworld_env", "AlfWorldEnv", ""),  # tasks: alfworld_gen
}
ENV_NAMES = tuple(_FAMILIES)
TINY_DEFAULT_N = 64


def _check_name(name: str) -> str:
    if name not in _FAMILIES:
        raise ValueError(f"env name={name!r}; expected one of {ENV_NAMES}")
    return name


def env_factory_path(name: str) -> str:
    """The import path "module:Class" of a family's env (what ProcessEnv needs)."""
    mod, cls, _ = _FAMILIES[_check_name(name)]
    return f"{mod}:{cls}"


def _import(module: str, what: str) -> Any:
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} could not be imported ({e}); is its engine installed?") from e
    if not hasattr(mod, what):
        raise ImportError(f"{module} has no {what!r} yet")
    return getattr(mod, what)


def _check_kwargs(fn: Callable, kwargs: dict, where: str) -> None:
    """Raise a ValueError naming any keyword `fn` does not take."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    bad = sorted(set(kwargs) - set(params))
    if bad:
        ok = sorted(k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL)
        raise ValueError(f"{where} got unknown keyword(s) {bad}; it takes {ok}")


def make_env(name: str, /, *, isolate: bool = False, process_kwargs: dict | None = None,
             **kwargs) -> TextEnv:
    """Build a `name` env with `kwargs`; isolate=True runs it in a subprocess (ProcessEnv)."""
    mod, cls_name, _ = _FAMILIES[_check_name(name)]
    cls = _import(mod, cls_name)
    _check_kwargs(cls.__init__, kwargs, f"make_env({name!r})")
    if isolate:
        from pilotrl_jax.envs.process import ProcessEnv

        return ProcessEnv(f"{mod}:{cls_name}", kwargs, **(process_kwargs or {}))
    if process_kwargs:
        raise ValueError("process_kwargs given without isolate=True; set isolate=True or drop them")
    return cls(**kwargs)


def _alfworld_tasks(split: str, n: int | None, seed: int, out_dir: str | None = None,
                    n_train: int | None = None, n_heldout: int | None = None,
                    task_types=None, room_size: str = "full", n_rl: int = 0,
                    train_layouts: int = 0) -> list[Task]:
    if not out_dir:
        raise ValueError("load_tasks('alfworld') needs out_dir=<directory for generated games> "
                         "(reused when the same n_train/n_heldout/seed are asked again)")
    if split not in ("train", "heldout", "rl"):
        raise ValueError(f"split={split!r}; ALFWorld tasks have splits ('train', 'heldout', 'rl')")
    generate = _import("pilotrl_jax.envs.alfworld_gen", "generate_tasks")
    if n is None and (n_train is None or n_heldout is None):
        raise ValueError("load_tasks('alfworld') needs n, or both n_train and n_heldout")
    n_train = n if n_train is None else n_train
    n_heldout = n if n_heldout is None else n_heldout
    kw = {} if task_types is None else {"task_types": task_types}
    if room_size != "full":
        kw["room_size"] = room_size
    if n_rl:
        kw["n_rl"] = n_rl
    if train_layouts:
        kw["train_layouts"] = train_layouts
    tasks = generate(out_dir, n_train, n_heldout, seed, **kw)[split]
    return tasks if n is None else tasks[:n]


def load_tasks(name: str, /, split: str = "train", n: int | None = None, seed: int = 0,
               **kwargs) -> list[Task]:
    """Tasks of family `name` and `split` ("train"/"heldout"; ScienceWorld and TWX also take
    "dev"/"test"). n=None: all of them (tiny: 64). Family options go in kwargs, e.g.
    scienceworld: task_names, simplifications; twx: games, params ("small");
    agentgym: indices={"train": (0, 500), "heldout": (500, 600)}, server;
    alfworld: out_dir, n_train, n_heldout, task_types, room_size, n_rl (split "rl": RL tasks in rooms
    neither train nor heldout has), train_layouts (room layouts of the train split; 0 = default)."""
    mod, _, loader = _FAMILIES[_check_name(name)]
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise ValueError(f"n={n!r}; expected a non-negative int or None (all)")
    if name == "alfworld":
        _check_kwargs(_alfworld_tasks, kwargs, "load_tasks('alfworld')")
        return _alfworld_tasks(split, n, seed, **kwargs)
    fn = _import(mod, loader)
    _check_kwargs(fn, kwargs, f"load_tasks({name!r})")
    if name == "tiny":
        return fn(split, TINY_DEFAULT_N if n is None else n, seed, **kwargs)
    return fn(split, n, seed, **kwargs)
