"""OpenAIClient / HTTPJudge / LLMSimEnv against a local server that misbehaves on command."""
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import pilotrl_jax
from pilotrl_jax.envs.base import EnvError, Task
from pilotrl_jax.rewards import EpisodeSummary, JudgeRequest, PlanRecord, RewardConfig, compute_rewards
from pilotrl_jax.rewards.http_judge import HTTPJudge
from pilotrl_jax.rewards.llm_env import LLMSimEnv
from pilotrl_jax.rewards.openai_client import ChatResult, ClientConfig, OpenAIClient, request_key

MSG = [{"role": "user", "content": "hello"}]
JUDGE_REPLY_5 = '{"correctness": 5, "followability": 5, "standardization": 5}'
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
    """The limit is reached (the server holds requests at a barrier until 3 are in flight together)
    and never exceeded; a client that stops short fails on the barrier's timeout, never hangs.
    (The old flake was in the fake server: a handler of an earlier test decremented `in_flight` after
    reset, so the count topped out at 2; see test_fake_server_counts_ignore_an_earlier_tests_requests.)"""
    state, url = server
    state.default = "gate"
    state.gate = threading.Barrier(3, timeout=5.0)
    state.hold_s = 0.05  # after the barrier: time for a request over the limit to show up
    judge = HTTPJudge(_client(url, max_concurrency=3, timeout_s=10.0, max_retries=0))
    out = judge.score([_req(i) for i in range(12)])
    assert state.gate_timeouts == 0, f"the client never had 3 requests in flight at once (max {state.max_in_flight})"
    assert all(j.ok for j in out) and state.requests == 12
    assert state.max_in_flight == 3  # reached, never exceeded
    assert judge.stats()["in_flight_max"] == 3


def test_fake_server_counts_ignore_an_earlier_tests_requests(server):
    """A request a client gave up on that is answered after reset() (an earlier test's "slow" one) leaves
    `in_flight` alone: before the fix it went to -1 and the concurrency test saw at most 2 of 3."""
    state, url = server
    state.script, state.slow_s = ["slow"], 0.3
    assert not _client(url, timeout_s=0.1, max_retries=0).chat(MSG).ok
    state.reset()  # the next test starts while the handler still sleeps
    time.sleep(0.5)
    assert state.in_flight == 0 and state.max_in_flight == 0


def _judge_threads():
    return [t for t in threading.enumerate() if t.name.startswith("http-judge")]


def test_step_deadline_against_a_hung_endpoint(server):
    """A hung endpoint: one step's judging returns by its deadline (not after retries x timeouts), every
    episode a failed judgement counted in the reward; the next step is unaffected."""
    state, url = server
    state.default = "hang"
    patient = dict(timeout_s=60.0, max_retries=4, backoff_s=1.0)  # the production defaults: minutes per unit
    t0 = time.monotonic()
    r = _client(url, **patient).chat(MSG, deadline=time.monotonic() + 0.5)
    assert time.monotonic() - t0 < 1.0 and not r.ok and "deadline" in r.error
    judge = HTTPJudge(_client(url, max_concurrency=2, **patient), deadline_s=1.0)
    sent = state.requests
    t0 = time.monotonic()
    out = judge.score([_req(i) for i in range(6)])
    assert time.monotonic() - t0 < 1.0 + 0.5
    assert not any(j.ok for j in out) and all("deadline" in j.error for j in out), [j.error for j in out]
    st = judge.stats()
    assert st["judgement_failures"] == 6 and st["unanswered"] + st["deadline_misses"] >= 6
    assert state.requests - sent == 2  # the 2 in flight; the rest never sent, not even after the deadline
    rewards = compute_rewards([EpisodeSummary(won=False, judge_ok=j.ok) for j in out], RewardConfig(plan_weight=1.0),
                              groups=[0, 0, 0, 1, 1, 1])
    assert rewards.metrics["reward/judge_failures"] == 6 and rewards.reward.tolist() == [0.0] * 6
    stale = _judge_threads()
    assert all(t.daemon for t in stale)  # cannot keep the process alive
    state.default = "ok"  # the endpoint recovers: the next step judges normally
    state.release.set()
    nxt = judge.score([_req(10 + i) for i in range(3)])
    assert all(j.ok and j.score == pytest.approx(4.0) for j in nxt)
    for t in stale:  # the client gave up at the deadline too: no thread outlives it for long
        t.join(timeout=2.0)
        assert not t.is_alive()


def test_late_answers_never_reach_a_later_step(server):
    """Threads stuck past the deadline (a client ignoring it) answer into their own step's results only,
    and the units they had not started are never sent."""
    _, url = server
    client = _client(url, max_concurrency=2)
    release, calls = threading.Event(), []
    late = '{"correctness": 1, "followability": 1, "standardization": 1}'

    def stuck(messages, **kw):
        calls.append(messages)
        release.wait(10.0)
        return ChatResult(ok=True, content=late)

    client.chat = stuck
    judge = HTTPJudge(client, deadline_s=0.5)
    first = judge.score([_req(i) for i in range(5)])
    assert not any(j.ok for j in first) and len(calls) == 2
    stale = _judge_threads()
    client.chat = lambda messages, **kw: ChatResult(ok=True, content=JUDGE_REPLY_5)
    release.set()  # the stuck threads answer while the next step runs
    second = judge.score([_req(i) for i in range(5)])
    for t in stale:
        t.join(timeout=2.0)
    assert all(j.ok and j.score == 5.0 for j in second)
    assert not any(j.ok for j in first) and len(calls) == 2


def test_blocked_judge_threads_do_not_keep_the_process_alive():
    """A judge thread blocked for good (no timeout anywhere) does not stop the interpreter from exiting."""
    script = textwrap.dedent("""
        import threading
        from pilotrl_jax.rewards import JudgeRequest, PlanRecord
        from pilotrl_jax.rewards.http_judge import HTTPJudge
        from pilotrl_jax.rewards.openai_client import ClientConfig, OpenAIClient

        client = OpenAIClient(ClientConfig(base_url="http://127.0.0.1:9/v1", model="m"))
        client.chat = lambda messages, **kw: threading.Event().wait()  # never returns
        judge = HTTPJudge(client, deadline_s=0.3)
        req = JudgeRequest(task="t", plans=(PlanRecord(0, ("go to the desk",)),), actions=(), observations=("t",))
        print("judged", [j.ok for j in judge.score([req, req])])
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(pilotrl_jax.__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the process did not exit: a blocked judge thread kept it alive ({e.stdout!r})")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "judged [False, False]" in proc.stdout


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


def test_config_deadline_reaches_the_http_judge():
    """`judge.deadline` of the config is the deadline of the HTTP judge the trainer builds (0: none)."""
    import types

    from pilotrl_jax.train import config as C
    from pilotrl_jax.train import trainer as T

    cfg = C.base_config()
    cfg.judge.update(base_url="http://127.0.0.1:9/v1", model="judge", deadline=7.5)
    stage = types.SimpleNamespace(reward=RewardConfig(plan_weight=1.0), judge="http")
    assert T.make_judge(types.SimpleNamespace(cfg=cfg), stage, None).deadline_s == 7.5
    cfg.judge.deadline = 0.0
    assert T.make_judge(types.SimpleNamespace(cfg=cfg), stage, None).deadline_s is None
    with pytest.raises(ValueError, match="judge.deadline"):
        HTTPJudge(base_url="http://127.0.0.1:9/v1", model="judge", deadline_s=-1.0)
