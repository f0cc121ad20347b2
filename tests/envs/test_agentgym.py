"""AgentGym HTTP client against a local AgentGym-style server that serves the tiny env."""
import threading
import time

import pytest

from pilotrl_jax.envs.agentgym import (PRESETS, AgentGymEnv, AgentGymProtocol, AgentGymServer,
                                       get_protocol, make_tasks)
from pilotrl_jax.envs.base import EnvError, StepResult, Task, TextEnv
from pilotrl_jax.envs.tiny import INVALID, TinyEnv
from pilotrl_jax.envs.tiny import make_tasks as tiny_tasks

TINY = tiny_tasks("train", 6, seed=0)


@pytest.fixture
def server():
    srv = AgentGymServer(lambda: TinyEnv(max_steps=30), TINY).start()
    yield srv
    srv.close()


def _expert_plans():
    local = TinyEnv()
    plans = []
    for t in TINY:
        local.reset(t)
        plans.append(local.expert_actions())
    return plans


def test_episodes_through_the_client(server):
    env = AgentGymEnv(server.url, timeout=5)
    assert isinstance(env, TextEnv)
    tasks = make_tasks("train", indices={"train": (0, len(TINY))}, server="tiny-served")
    assert [t.payload["data_idx"] for t in tasks] == list(range(len(TINY)))
    for task, plan in zip(tasks, _expert_plans()):
        obs, info = env.reset(task)
        assert "Your task is to:" in obs and info["won"] is False
        assert env.observation() == obs
        assert env.expert_actions() is None
        for a in plan:
            res = env.step(a)
            assert isinstance(res, StepResult)
        assert res.done and res.info["won"] and res.info["score"] == 1.0
        assert res.info["admissible_actions"]
    assert len(server.envs) == 1  # one server env reused across resets
    res = env.step("look")
    assert res.done and res.observation == "The episode is over."
    env.reset(tasks[0])
    bad = env.step("sing a song")
    assert bad.observation == INVALID and bad.reward == 0.0 and not bad.done
    env.close()
    assert server.envs == {}


def test_webshop_style_field_names(server):
    # a server with WebShop's names: bare int from /create, env_idx, session_id, "state"
    def rename_in(method, path, body, query):
        if "env_idx" in body:
            body["id"] = body.pop("env_idx")
        if "session_id" in body:
            body["data_idx"] = body.pop("session_id")
        if "env_idx" in query:
            query["id"] = query.pop("env_idx")
        return None

    def rename_out(method, path, status, payload):
        if path == "/create":
            return status, payload["id"]
        if path == "/step":
            payload["state"] = payload.pop("observation")
            payload.pop("score")
            payload["reward"] = 1.0 if payload["won"] else 0.0
        if path == "/reset":
            return status, [payload["observation"][:10] + "...", None]
        return status, payload

    server.before_request, server.after_request = rename_in, rename_out
    env = AgentGymEnv(server.url, protocol="webshop", timeout=5)
    plan = _expert_plans()[1]
    obs, _ = env.reset(Task("agentgym", "w1", payload={"data_idx": 1}))
    assert "Your task is to:" in obs  # fetched from /observation, not the truncated reset answer
    for a in plan:
        res = env.step(a)
    assert res.done and res.info["won"] and res.info["server_reward"] == 1.0


def test_server_error_500_raises_env_error(server):
    server.before_request = lambda m, p, b, q: (500, {"error": "boom"}) if p == "/step" else None
    env = AgentGymEnv(server.url, timeout=5, retries=3, backoff=0.01)
    env.reset(Task("agentgym", "t0", payload={"data_idx": 0}))
    with pytest.raises(EnvError, match="HTTP 500.*boom"):
        env.step("look")
    # the next reset recreates the server env
    server.before_request = None
    env.reset(Task("agentgym", "t0", payload={"data_idx": 0}))
    assert not env.step("look").done


def test_hanging_server_times_out(server):
    release = threading.Event()
    server.before_request = lambda m, p, b, q: (release.wait(10), None)[1] if p == "/step" else None
    env = AgentGymEnv(server.url, timeout=0.5, retries=3)
    env.reset(Task("agentgym", "t0", payload={"data_idx": 0}))
    t = time.monotonic()
    with pytest.raises(EnvError, match="no answer within 0.5s"):
        env.step("look")
    assert time.monotonic() - t < 2.0  # a step is never retried after a timeout
    release.set()


def test_retries_on_503_then_success(server):
    calls = {"n": 0}

    def flaky(method, path, body, query):
        if path == "/step":
            calls["n"] += 1
            if calls["n"] <= 2:
                return 503, {"error": "busy"}
        return None

    server.before_request = flaky
    env = AgentGymEnv(server.url, timeout=5, retries=2, backoff=0.01)
    env.reset(Task("agentgym", "t0", payload={"data_idx": 0}))
    assert env.step("look").observation.startswith("You are in")
    assert calls["n"] == 3
    calls["n"] = -10
    env2 = AgentGymEnv(server.url, timeout=5, retries=1, backoff=0.01)
    env2.reset(Task("agentgym", "t0", payload={"data_idx": 0}))
    with pytest.raises(EnvError, match="503.*after 2 attempts"):
        env2.step("look")


def test_unreachable_server_and_bad_inputs():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    env = AgentGymEnv(f"http://127.0.0.1:{port}", timeout=1, retries=1, backoff=0.01)
    with pytest.raises(EnvError, match="refused"):
        env.reset(Task("agentgym", "t", payload={"data_idx": 0}))
    with pytest.raises(ValueError, match="base_url"):
        AgentGymEnv("localhost:3000")
    with pytest.raises(ValueError, match="data_idx"):
        env.reset(Task("agentgym", "t"))
    with pytest.raises(ValueError, match="protocol"):
        get_protocol("nope")
    with pytest.raises(ValueError, match="unknown fields"):
        get_protocol({"idfield": "x"})
    assert get_protocol({"id_field": "env_idx"}).id_field == "env_idx"
    assert get_protocol("sciworld").score_scale == 100.0
    assert isinstance(PRESETS["webshop"], AgentGymProtocol)
    with pytest.raises(ValueError, match="indices"):
        make_tasks("heldout", indices={"train": (0, 3)})
    few = make_tasks("train", n=3, seed=0, indices={"train": (0, 100)})
    assert len(few) == 3 and few == make_tasks("train", n=3, seed=0, indices={"train": (0, 100)})


def test_sciworld_style_scores(server):
    # scores 0..100 as AgentGym's SciWorld server sends them
    def scale(method, path, status, payload):
        if path == "/step":
            payload["score"] = payload["score"] * 100
            payload.pop("won")
        return status, payload

    server.after_request = scale
    proto = get_protocol("sciworld")
    env = AgentGymEnv(server.url, protocol=proto, timeout=5)
    plan = _expert_plans()[2]
    env.reset(Task("agentgym", "t2", payload={"data_idx": 2}))
    scores = [env.step(a).info["score"] for a in plan]
    assert scores[-1] == 1.0 and all(0.0 <= s <= 1.0 for s in scores)
