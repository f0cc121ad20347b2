"""Rollouts over ProcessEnv workers: a worker SIGKILLed or hung mid-episode ends only that episode."""
import os
import signal

import pytest

from pilotrl_jax.agent.spans import SpanKind
from pilotrl_jax.envs.process import EnvPool
from pilotrl_jax.rollout import ForcedPolicy, collect, expert_turn

TINY = "pilotrl_jax.envs.tiny:TinyEnv"


@pytest.fixture(scope="module")
def pool():
    """Three tiny-world workers (fault injection on), shared by the tests here."""
    with EnvPool(TINY, 3, {"fault_injection": True}, step_timeout=2.0) as p:
        yield p


def test_sigkill_mid_episode_is_env_error_others_finish(pool, tiny_tok, tiny_tasks):
    killed = []

    def turn(ctx):
        if ctx.group_id == 1 and ctx.episode.num_turns == 1 and ctx.request.kind == SpanKind.ACTION and not killed:
            killed.append(ctx.env.pid)
            os.kill(ctx.env.pid, signal.SIGKILL)  # the worker dies before the action reaches it
        return expert_turn(ctx)

    batch = collect(tiny_tasks[:4], ForcedPolicy(turn), pool, tiny_tok, max_turns=20, progress=False)
    assert killed and batch.statuses == ["success", "env_error", "success", "success"]
    bad = batch.episodes[1]
    assert "EnvError" in bad.error and not bad.won and bad.num_turns == 2
    assert bad.agent.status == "env_error" and bad.agent.spans == bad.spans
    assert bad.spans[-1].kind == SpanKind.ACTION  # ends at the action the env never answered
    arr = batch.to_arrays()
    assert arr["lengths"][1] == bad.length > 0
    # the 4th episode reused a worker: the broken one was restarted by the pool
    assert sum(e.restarts for e in pool.envs) == 1 and not any(e.broken for e in pool.envs)


def test_hung_worker_times_out_as_env_error(pool, tiny_tok, tiny_tasks):
    def turn(ctx):
        if ctx.group_id == 0 and ctx.request.kind == SpanKind.ACTION:
            return "<thought>wait</thought><action>__sleep 30</action>"
        return expert_turn(ctx)

    batch = collect(tiny_tasks[:3], ForcedPolicy(turn), pool, tiny_tok, max_turns=20, progress=False)
    assert batch.statuses == ["env_error", "success", "success"]
    assert "did not answer" in batch.episodes[0].error
