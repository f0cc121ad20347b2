"""make_env / load_tasks for every family, lazy imports, and clear errors."""
import importlib

import pytest

from pilotrl_jax.envs.base import TextEnv
from pilotrl_jax.envs.process import ProcessEnv
from pilotrl_jax.envs.registry import ENV_NAMES, env_factory_path, load_tasks, make_env
from pilotrl_jax.envs.tiny import TinyEnv


def test_tiny_through_the_registry():
    env = make_env("tiny", max_steps=10)
    assert isinstance(env, TinyEnv) and isinstance(env, TextEnv) and env.max_steps == 10
    tasks = load_tasks("tiny", "heldout", n=5, seed=2)
    assert len(tasks) == 5 and all(t.split == "heldout" for t in tasks)
    assert len(load_tasks("tiny", "train")) == 64
    env.reset(tasks[0])
    for a in env.expert_actions():
        res = env.step(a)
    assert res.info["won"]


def test_isolated_env_runs_in_a_subprocess():
    env = make_env("tiny", isolate=True, process_kwargs={"step_timeout": 5}, max_steps=10)
    try:
        assert isinstance(env, ProcessEnv)
        task = load_tasks("tiny", "train", n=1)[0]
        env.reset(task)
        for a in env.expert_actions():
            res = env.step(a)
        assert res.info["won"]
    finally:
        env.close()


def test_errors_name_the_input():
    with pytest.raises(ValueError, match="expected one of"):
        make_env("zork")
    with pytest.raises(ValueError, match=r"unknown keyword\(s\) \['max_step'\]"):
        make_env("tiny", max_step=3)
    with pytest.raises(ValueError, match="isolate=True"):
        make_env("tiny", process_kwargs={"step_timeout": 1})
    with pytest.raises(ValueError, match="n="):
        load_tasks("tiny", "train", n=-1)
    with pytest.raises(ValueError, match="games"):
        load_tasks("tiny", "train", n=1, games=["x"])
    with pytest.raises(ValueError, match="indices"):
        load_tasks("agentgym", "train", n=3)
    with pytest.raises(ValueError, match="out_dir"):
        load_tasks("alfworld", "train", n=3)
    assert env_factory_path("scienceworld") == "pilotrl_jax.envs.scienceworld_env:ScienceWorldEnv"
    assert set(ENV_NAMES) == {"tiny", "scienceworld", "twx", "agentgym", "alfworld"}


def test_agentgym_tasks_and_client():
    tasks = load_tasks("agentgym", "heldout", n=4, seed=0, indices={"heldout": (100, 200)}, server="webshop")
    assert len(tasks) == 4 and all(100 <= t.payload["data_idx"] < 200 for t in tasks)
    env = make_env("agentgym", base_url="http://127.0.0.1:1", protocol="webshop")
    assert env.protocol.id_field == "env_idx"


def test_twx_through_the_registry():
    pytest.importorskip("textworld_express")
    env = make_env("twx", step_limit=50)
    try:
        task = load_tasks("twx", "heldout", n=1, games=["coin"], params="small", env=env)[0]
        env.reset(task)
        for a in env.expert_actions():
            res = env.step(a)
        assert res.info["won"]
    finally:
        env.close()


def test_alfworld_lazy_import(tmp_path):
    gen = importlib.import_module("pilotrl_jax.envs.alfworld_gen")
    if not hasattr(gen, "generate_tasks"):
        pytest.skip("alfworld_gen.generate_tasks not there yet")
    tasks = load_tasks("alfworld", "heldout", n=1, seed=0, out_dir=str(tmp_path), n_train=1)
    assert len(tasks) == 1 and tasks[0].env == "alfworld" and tasks[0].split == "heldout"
    env = make_env("alfworld")
    try:
        obs, info = env.reset(tasks[0])
        assert obs and info["won"] is False
    finally:
        env.close()
