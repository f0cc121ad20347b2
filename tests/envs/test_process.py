"""ProcessEnv / EnvPool: a crash or hang in the worker raises EnvError; restart and pool work."""
import os
import signal
import time

import pytest

from pilotrl_jax.envs.base import EnvError, StepResult, Task
from pilotrl_jax.envs.process import EnvPool, ProcessEnv, resolve_factory
from pilotrl_jax.envs.tiny import TinyEnv, make_tasks

FACTORY = "pilotrl_jax.envs.tiny:TinyEnv"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); read its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def tasks():
    return make_tasks("train", 4, seed=0)


def test_resolve_factory_errors():
    assert resolve_factory(FACTORY) is TinyEnv
    assert resolve_factory("pilotrl_jax.envs.tiny.TinyEnv") is TinyEnv
    with pytest.raises(ValueError, match="cannot import"):
        resolve_factory("no_such_module_xyz:Env")
    with pytest.raises(ValueError, match="no attribute"):
        resolve_factory("pilotrl_jax.envs.tiny:Nope")
    with pytest.raises(ValueError, match="factory"):
        ProcessEnv(42)


def test_episode_matches_in_process_env(tasks):
    local = TinyEnv()
    with ProcessEnv(FACTORY, {"max_steps": 20}) as env:
        assert env.pid != os.getpid() and env.is_alive()
        for task in tasks:
            obs, info = env.reset(task)
            assert (obs, info) == local.reset(task)
            plan = env.expert_actions()
            assert plan == list(local.expert_actions())
            for a in plan:
                res = env.step(a)
                assert isinstance(res, StepResult)
                assert res == local.step(a)
            assert res.info["won"]
        # the env's own exceptions keep their type and the worker survives
        with pytest.raises(ValueError, match="env='tiny'"):
            env.reset(Task(env="other", task_id="x"))
        assert not env.broken
        assert env.call("admissible_actions")
    assert env.broken  # closed


def test_sigkill_mid_episode_then_restart(tasks):
    env = ProcessEnv(FACTORY, {}, step_timeout=10)
    try:
        env.reset(tasks[0])
        env.step("look")
        old = env.pid
        os.kill(old, signal.SIGKILL)
        with pytest.raises(EnvError, match="died"):
            env.step("look")
        assert env.broken
        with pytest.raises(EnvError, match="restart"):
            env.step("look")
        env.restart()
        assert env.pid != old and not env.broken and env.restarts == 1
        env.reset(tasks[0])
        for a in env.expert_actions():
            res = env.step(a)
        assert res.info["won"]
    finally:
        env.close()


def test_hanging_step_times_out_and_worker_is_killed(tasks):
    env = ProcessEnv(FACTORY, {"fault_injection": True}, step_timeout=0.5)
    try:
        env.reset(tasks[0])
        pid = env.pid
        t = time.monotonic()
        with pytest.raises(EnvError, match="did not answer step within 0.5s"):
            env.step("__sleep 30")
        assert time.monotonic() - t < 5
        assert env.broken and not _alive(pid)
        env.restart()
        env.reset(tasks[0])
        assert env.step("look").observation
        # a crash from inside the env (hard exit) is reported the same way
        with pytest.raises(EnvError, match="exit code 13"):
            env.step("__crash")
    finally:
        env.close()


def test_factory_failure_in_worker_raises_env_error():
    with pytest.raises(EnvError, match="max_steps"):
        ProcessEnv(FACTORY, {"max_steps": -1})


def test_pool_hands_out_restarts_and_closes(tasks):
    pool = EnvPool(FACTORY, 2, {"fault_injection": True}, step_timeout=5)
    try:
        assert len(pool) == 2
        a = pool.acquire()
        b = pool.acquire()
        assert a is not b and a.pid != b.pid
        with pytest.raises(TimeoutError):
            pool.acquire(timeout=0.1)
        a.reset(tasks[1])
        os.kill(a.pid, signal.SIGKILL)
        with pytest.raises(EnvError):
            a.step("look")
        pool.release(a)
        pool.release(b)
        # the broken env comes back restarted
        seen = set()
        for _ in range(2):
            with pool.lease() as env:
                assert not env.broken
                env.reset(tasks[1])
                assert not env.step("look").done
                seen.add(id(env))
        assert a.restarts == 1
        with pytest.raises(ValueError, match="does not belong"):
            pool.release(ProcessEnv(FACTORY, start=False))
        pids = [e.pid for e in pool.envs]
    finally:
        pool.close()
    assert all(not _alive(p) for p in pids)
    with pytest.raises(RuntimeError, match="closed"):
        pool.acquire(timeout=0.1)
