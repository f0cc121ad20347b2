"""ScienceWorld through the TextEnv protocol: the real JVM, gold paths that win, splits, scores."""
import os
import signal
import subprocess

import pytest

from pilotrl_jax.envs.base import EnvError, StepResult, Task, TextEnv

pytest.importorskip("scienceworld")

from pilotrl_jax.envs.scienceworld_env import ScienceWorldEnv, load_tasks  # noqa: E402

SHORT = ["lifespan-longest-lived", "find-non-living-thing"]  # short gold paths, fast resets


@pytest.fixture(scope="module")
def env():
    e = ScienceWorldEnv(step_limit=100)
    yield e
    e.close()


def test_load_tasks_splits(env):
    train = load_tasks("train", n=6, seed=0, task_names=SHORT, env=env)
    held = load_tasks("heldout", n=6, seed=0, task_names=SHORT, env=env)
    assert len(train) == 6 and len(held) == 6
    assert {t.task_type for t in train} == set(SHORT)  # round-robin over names
    assert all(t.split == "train" for t in train) and all(t.split == "heldout" for t in held)
    for name in SHORT:
        tr = set(env.variations(name, "train"))
        te = set(env.variations(name, "test"))
        dv = set(env.variations(name, "dev"))
        assert tr and te and dv and not (tr & te) and not (tr & dv) and not (dv & te)
        assert {t.payload["variation"] for t in train if t.task_type == name} <= tr
        assert {t.payload["variation"] for t in held if t.task_type == name} <= te
    assert load_tasks("train", n=6, seed=0, task_names=SHORT, env=env) == train
    assert load_tasks("train", n=6, seed=1, task_names=SHORT, env=env) != train
    with pytest.raises(ValueError, match="split"):
        load_tasks("valid", env=env)
    with pytest.raises(ValueError, match="unknown"):
        load_tasks("train", n=1, task_names=["no-such-task"], env=env)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_gold_path_wins(env, split):
    assert isinstance(env, TextEnv)
    engine = env._engine
    for task in load_tasks(split, n=2, seed=0, task_names=SHORT, env=env):
        obs, info = env.reset(task)
        assert env._engine is engine  # one JVM across resets
        assert info["task_description"] and info["task_description"] in obs
        assert info["won"] is False and info["score"] == 0.0
        gold = env.expert_actions()
        assert gold and gold == env.gold_actions()
        total = 0.0
        for i, a in enumerate(gold):
            res = env.step(a)
            assert isinstance(res, StepResult) and 0.0 <= res.info["score"] <= 1.0
            total += res.reward
            if res.done:  # some gold paths carry extra actions after the win
                break
            assert env.expert_actions() == gold[i + 1:]
        assert res.done and res.info["won"] and res.info["score"] == 1.0
        assert res.info["raw_score"] == 100 and total == pytest.approx(1.0)
    assert env.timings["n_reset"] >= 2 and env.timings["startup_s"] > 0


def test_invalid_action_admissible_and_off_path_expert(env):
    task = load_tasks("train", n=1, seed=0, task_names=["find-non-living-thing"], env=env)[0]
    obs, _ = env.reset(task)
    res = env.step("fly to the moon")
    assert "No known action" in res.observation
    assert res.reward == 0.0 and not res.done and not res.info["won"]
    assert env.expert_actions() is None  # left the gold path
    adm = env.admissible_actions()
    assert "look around" in adm and "inventory" in adm and len(adm) > 10
    # a reset of the same task starts over identically
    obs2, _ = env.reset(task)
    assert obs2 == obs and env.expert_actions()


def test_partial_score_and_step_limit():
    env = ScienceWorldEnv(step_limit=3, gold_path=True, with_admissible=True)
    try:
        task = Task("scienceworld", "x", payload={"task_name": "find-non-living-thing", "variation": 0})
        _, info = env.reset(task)
        assert "admissible_actions" in info and "look around" in info["admissible_actions"]
        gold = env.expert_actions()
        scores = []
        for a in gold:
            res = env.step(a)
            scores.append(res.info["score"])
            if res.done:
                break
        # stopped by the step limit (engine moves; "look around" is free), before the win
        assert res.done and not res.info["won"] and res.info["moves"] == 3
        assert scores == sorted(scores) and 0.0 < scores[-1] < 1.0
        assert res.info["raw_score"] == round(100 * scores[-1])
        with pytest.raises(ValueError, match="task_name"):
            env.reset(Task("scienceworld", "y", payload={"variation": 0}))
        with pytest.raises(ValueError, match="unknown"):
            env.reset(Task("scienceworld", "y", payload={"task_name": "nope", "variation": 0}))
        with pytest.raises(ValueError, match="env='scienceworld'"):
            env.reset(Task("tiny", "y"))
    finally:
        env.close()


def _java_children(pid):
    """Live (not zombie) java processes in the process group `pid`."""
    out = subprocess.run(["ps", "-o", "pid=,stat=,comm=", "-g", str(pid)], capture_output=True, text=True)
    rows = [line.split() for line in out.stdout.splitlines()]
    return [r for r in rows if len(r) == 3 and r[2] == "java" and not r[1].startswith("Z")]


@pytest.mark.slow
def test_in_subprocess_sigkill_takes_the_jvm_down():
    from pilotrl_jax.envs.process import ProcessEnv

    penv = ProcessEnv("pilotrl_jax.envs.scienceworld_env:ScienceWorldEnv", {"gold_path": False},
                      step_timeout=30, reset_timeout=60)
    try:
        task = Task("scienceworld", "x", payload={"task_name": "find-non-living-thing", "variation": 1})
        penv.reset(task)
        assert "No known action" in penv.step("xyzzy").observation
        pid = penv.pid
        assert _java_children(pid), "the worker should own a JVM in its process group"
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EnvError):
            penv.step("look around")
        assert not _java_children(pid), "the JVM must die with its worker"
        penv.restart()
        obs, _ = penv.reset(task)
        assert obs
    finally:
        penv.close()
