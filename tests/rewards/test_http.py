"""OpenAIClient / HTTPJudge / LLMSimEnv against a local server that misbehaves on command."""
import json
import time

import pytest

from pilotrl_jax.envs.base import EnvError, Task
from pilotrl_jax.rewards import JudgeRequest, PlanRecord
from pilotrl_jax.rewards.http_judge import HTTPJudge
from pilotrl_jax.rewards.llm_env import LLMSimEnv
from pilotrl_jax.rewards.openai_client import ClientConfig, OpenAIClient, request_key

MSG = [{"role": "user", "content": "hello"}]
FAST = dict(timeout_s=0.4, max_retries=3, backoff_s=0.01, max_backoff_s=0.05)


def _client(url, **kw):
    return OpenAIClient(ClientConfig(base_url=url, model="judge", **{**FAST, **kw}))


def _req(i=0, n_plans=1):
    plans = tuple(PlanRecord(k, ("go to the desk", f"take pen {i}")) for k in range(n_plans))
    return JudgeRequest(task=f"task {i}: put a pen on the shelf", plans=plans, actions=("go to desk 1",),
                        observations=("room", "On the desk 1, you see a pen 1."), won=bool(i % 2))


def test_ok_cache_and_stats(server, tmp_path):
    state, url = server
    c = _client(url, cache_path=str(tmp_path / "cache.json"))
    r1, r2 = c.chat(MSG), c.chat(MSG)
    assert r1.ok and not r1.cached and r2.ok and r2.cached and r1.content == r2.content
    assert state.requests == 1
    assert c.chat(MSG, use_cache=False).ok and state.requests == 2
    st = c.stats()
    assert st["requests"] == 3 and st["cache_hits"] == 1 and st["http_calls"] == 2 and st["failures"] == 0
    # On-disk cache: a new client answers from the file without calling the server.
    data = json.loads((tmp_path / "cache.json").read_text())
    assert request_key(c.payload(MSG)) in data
    c2 = _client(url, cache_path=str(tmp_path / "cache.json"))
    assert c2.chat(MSG).cached and state.requests == 2
    assert state.bodies[0]["model"] == "judge" and state.bodies[0]["temperature"] == 0.0
    # Batched flushes: nothing written until flush/close.
    lazy = _client(url, cache_path=str(tmp_path / "lazy.json"), cache_flush_every=100)
    assert lazy.chat([{"role": "user", "content": "lazy"}]).ok and not (tmp_path / "lazy.json").exists()
    lazy.close()
    assert len(json.loads((tmp_path / "lazy.json").read_text())) == 1
    (tmp_path / "broken.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="broken.json"):
        _client(url, cache_path=str(tmp_path / "broken.json"))


def test_retries_on_500_429_and_timeout(server):
    state, url = server
    c = _client(url)
    state.script = ["500", "429", "slow"]
    state.slow_s = 1.0
    t0 = time.monotonic()
    r = c.chat(MSG)
    assert r.ok and r.attempts == 4, r
    st = c.stats()
    assert st["retries"] == 3 and st["timeouts"] == 1 and st["http_errors"] == 2 and st["failures"] == 0
    assert time.monotonic() - t0 < 3.0


def test_gives_up_after_retries_and_on_client_errors(server):
    state, url = server
    c = _client(url, max_retries=2)
    state.default = "500"
    r = c.chat(MSG)
    assert not r.ok and r.attempts == 3 and "HTTP 500" in r.error
    state.default = "400"
    r = c.chat([{"role": "user", "content": "other"}])
    assert not r.ok and r.attempts == 1 and "HTTP 400" in r.error  # not retryable
    state.default = "badbody"
    r = c.chat([{"role": "user", "content": "third"}])
    assert not r.ok and "not JSON" in r.error
    st = c.stats()
    assert st["failures"] == 3 and st["retries"] == 2
    # Failures are not cached.
    state.default = "ok"
    before = state.requests
    r = c.chat([{"role": "user", "content": "other"}])
    assert r.ok and not r.cached and state.requests == before + 1


def test_backoff_grows_and_honours_retry_after(server):
    _, url = server
    c = _client(url, backoff_s=0.1, max_backoff_s=1.0, jitter=0.0)
    assert [c._backoff(a, None) for a in range(5)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    assert c._backoff(0, 0.5) == pytest.approx(0.5) and c._backoff(0, 10.0) == pytest.approx(1.0)


def test_connection_refused_is_a_flagged_failure():
    c = OpenAIClient(ClientConfig(base_url="http://127.0.0.1:9/v1", model="m", **FAST))
    r = c.chat(MSG)
    assert not r.ok and "connection" in r.error and c.stats()["failures"] == 1


def test_judge_scores_and_flags_failures(server):
    state, url = server
    judge = HTTPJudge(_client(url, max_concurrency=1))
    state.script = ["garbage"]  # the first unit's answer is not JSON: a failed judgement
    out = judge.score([_req(0), _req(1)])
    assert not out[0].ok and "unparseable" in out[0].error and out[0].score is None
    assert out[1].ok and out[1].score == pytest.approx(4.0) and out[1].score_norm == pytest.approx(0.75)
    assert out[1].criteria == {"correctness": 4.0, "followability": 3.0, "standardization": 5.0}
    state.default = "500"
    out = judge.score([_req(2)])  # all retries fail: flagged, no exception
    assert not out[0].ok and "HTTP 500" in out[0].error
    st = judge.stats()
    assert st["parse_failures"] == 1 and st["request_failures"] == 1 and st["judgement_failures"] == 2
    assert st["episodes"] == 3 and st["retries"] == 3 and st["requests"] == 3
    # Repaired answers (single quotes, trailing comma, numbers as strings) are fine.
    state.default = "ok"
    state.reply = lambda m: "Sure: {'correctness': '5', 'followability': 4, 'standardization': '2',}"
    (j,) = judge.score([_req(3)])
    assert j.ok and j.criteria == {"correctness": 5.0, "followability": 4.0, "standardization": 2.0}
    # Repeated prompts come from the cache.
    before = state.requests
    (j2,) = judge.score([_req(3)])
    assert j2.score == j.score and state.requests == before and judge.stats()["cache_hits"] >= 1


def test_partial_unit_failures(server):
    state, url = server
    judge = HTTPJudge(_client(url, max_concurrency=1), min_ok_fraction=0.5)
    state.script = ["garbage"]
    (j,) = judge.score([_req(0, n_plans=3)])
    assert j.ok and j.n_units == 3 and j.n_failed == 1 and "error" in j.per_unit[0]
    strict = HTTPJudge(_client(url, max_concurrency=1), min_ok_fraction=1.0)
    state.script = ["garbage"]
    (j,) = strict.score([_req(5, n_plans=3)])
    assert not j.ok and "1/3" in j.error


def test_concurrency_limit_respected(server):
    state, url = server
    state.default = "hold"
    state.hold_s = 0.1
    judge = HTTPJudge(_client(url, max_concurrency=3, timeout_s=2.0))
    out = judge.score([_req(i) for i in range(12)])
    assert all(j.ok for j in out)
    assert state.max_in_flight == 3  # reached, never exceeded
    assert judge.stats()["in_flight_max"] <= 3


def test_api_key_from_env(server, monkeypatch):
    state, url = server
    monkeypatch.setenv("FAKE_JUDGE_KEY", "sekrit")
    c = OpenAIClient(ClientConfig(base_url=url, model="m", api_key_env="FAKE_JUDGE_KEY", **FAST))
    assert c.chat(MSG).ok and state.auth[-1] == "Bearer sekrit"
    monkeypatch.delenv("FAKE_JUDGE_KEY")
    with pytest.raises(ValueError, match="FAKE_JUDGE_KEY"):
        OpenAIClient(ClientConfig(base_url=url, model="m", api_key_env="FAKE_JUDGE_KEY"))


def test_config_errors():
    with pytest.raises(ValueError, match="base_url"):
        ClientConfig(base_url="localhost:8000", model="m")
    with pytest.raises(ValueError, match="model"):
        ClientConfig(base_url="http://x/v1", model="")
    with pytest.raises(ValueError, match="max_concurrency"):
        ClientConfig(base_url="http://x/v1", model="m", max_concurrency=0)
    with pytest.raises(ValueError, match="base_url= and model="):
        HTTPJudge()


def test_llm_sim_env(server):
    state, url = server
    replies = iter([
        '{"observation": "On the desk 1, you see a pen 1.", "done": false, "success": false, "score": 0.3}',
        "Here: {'observation': 'You put the pen on the shelf.', 'done': 'true', 'success': True,}",
        "no json at all",
    ])
    state.reply = lambda m: next(replies)
    env = LLMSimEnv(_client(url, max_concurrency=1), max_steps=5)
    task = Task("llm_sim", "t0", payload={"description": "Your task is to: put a pen on the shelf.",
                                           "world": "the pen is on the desk", "reference": ["go to desk 1"]})
    obs, info = env.reset(task)
    assert "put a pen" in obs and info["won"] is False
    r = env.step("go to desk 1")
    assert not r.done and r.info["score"] == pytest.approx(0.3) and "pen 1" in r.observation
    r = env.step("put pen 1 on shelf 1")
    assert r.done and r.info["won"] and r.reward == 1.0
    user = state.bodies[-1]["messages"][1]["content"]
    assert "the pen is on the desk" in user and "Action: go to desk 1" in user
    with pytest.raises(EnvError, match="observation"):
        env.step("look")
    state.default = "500"
    env.reset(task)
    with pytest.raises(EnvError, match="failed after 4 attempt"):
        env.step("look again")
    st = env.stats()
    assert st["env_errors"] == 2 and st["parse_failures"] == 1 and st["steps"] == 4
    with pytest.raises(ValueError, match="description"):
        env.reset(Task("llm_sim", "bad"))


def test_make_judge_and_unbuildable_prompt_is_a_failed_unit(server):
    from pilotrl_jax.rewards import GroundedJudge, make_judge

    state, url = server
    assert isinstance(make_judge("grounded"), GroundedJudge)
    judge = make_judge("http", base_url=url, model="judge", **FAST)
    bad = JudgeRequest(task="t", plans=(PlanRecord(0, ("ok", "  ")),), actions=(), observations=("t",))
    out = judge.score([bad, _req(1)])
    assert not out[0].ok and "could not build the prompt" in out[0].error and out[1].ok
    with pytest.raises(ValueError, match="judge kind"):
        make_judge("gpt")
