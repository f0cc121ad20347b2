"""Rollouts on the real engines: ALFWorld (sampled + expert-forced stage 1), TextWorldExpress and
ScienceWorld (JVMs in EnvPool workers): spans, masks and statuses end to end."""
import jax
import numpy as np
import pytest

from pilotrl_jax.agent.spans import POLICY_KINDS, SpanKind
from pilotrl_jax.agent.tokenizer import build_word_tokenizer
from pilotrl_jax.envs.base import Task
from pilotrl_jax.envs.process import EnvPool
from pilotrl_jax.models import llama
from pilotrl_jax.models.config import LlamaConfig
from pilotrl_jax.rollout import ExpertPlans, ForcedPolicy, collect, expert_turn
from pilotrl_jax.sampling import SamplerEngine

pytestmark = pytest.mark.slow

CORPUS = [
    "You are in the middle of a room. Looking quickly around you, you see a cabinet 6, a cabinet 5, a cabinet 4, "
    "a coffeemachine 1, a countertop 3, a diningtable 1, a drawer 2, a fridge 1, a garbagecan 1, a microwave 1, "
    "a shelf 3, a sinkbasin 1, a stoveburner 4, a toaster 1.",
    "Your task is to: put a clean mug in coffeemachine. On the countertop 1, you see a apple 1, a knife 2.",
    "You arrive at drawer 2. The drawer 2 is closed. You open the drawer 2. You pick up the watch 1 from the shelf 4.",
    "This room is called the kitchen. In it, you see: a substance called air, a counter, a cupboard, a fridge. "
    "You also see: A door to the hallway (that is open). Your task is to find a(n) non-living thing. First, focus "
    "on the thing. Then, move it to the purple box in the workshop.",
    "You are in the kitchen. In one part of the room you see a fridge that is closed. You take the coin. "
    "Your task is to find the coin. move north, open door to west, take coin, look around, inventory.",
] * 20


def _check(batch, n_expected):
    arr = batch.to_arrays()
    assert arr["input_ids"].shape[0] == n_expected
    for b, e in enumerate(batch.episodes):
        n = e.length
        assert n > 0 and e.spans[0].kind == SpanKind.PROMPT, (e.status, e.error)  # an env failure shows here
        np.testing.assert_array_equal(arr["attention_mask"][b], (np.arange(arr["input_ids"].shape[1]) < n))
        pol = np.isin(arr["kind_ids"][b, :n], [int(k) for k in POLICY_KINDS])
        assert pol.any() and (arr["sampler_logprobs"][b, :n][~pol] == 0).all()
    return arr


@pytest.fixture(scope="module")
def tok():
    """A word tokenizer trained on household/science/TWX-like text."""
    return build_word_tokenizer(CORPUS, vocab_size=1024)


@pytest.fixture(scope="module")
def engine(tok):
    """A random tiny LLaMA on an engine with room for long ALFWorld prompts."""
    cfg = LlamaConfig.tiny(vocab_size=len(tok))
    return SamplerEngine(cfg, llama.init_params(cfg, jax.random.PRNGKey(1)), max_batch=8, max_len=2048,
                         tokenizer=tok, seed=0)


@pytest.fixture(scope="module")
def alf(tmp_path_factory):
    """Four generated ALFWorld games and four in-process engines (called from one env thread)."""
    pytest.importorskip("alfworld")
    from pilotrl_jax.envs.alfworld_env import AlfWorldEnv
    from pilotrl_jax.envs.alfworld_gen import generate_tasks

    tasks = generate_tasks(str(tmp_path_factory.mktemp("alf")), 4, 0, seed=0)["train"]
    envs = [AlfWorldEnv() for _ in range(4)]
    yield tasks, envs
    for e in envs:
        e.close()


def test_alfworld_sampled_rollout(alf, engine, tok, recording_policy):
    tasks, envs = alf
    pol = recording_policy(engine, temperature=1.0)
    batch = collect(tasks, pol, envs, tok, group_size=2, max_turns=2, max_plan_tokens=48, max_action_tokens=32,
                    progress=False, seed=0)  # in-process ALFWorld: the runner calls it from one thread
    _check(batch, 8)
    for e in batch.episodes:
        assert [t for s in e.spans for t in s.token_ids] == pol.released[e.seed]
        assert e.status == "max_turns" and e.num_turns == 2
        assert "Your task is to" in e.spans[0].text
        kinds = [s.kind for s in e.spans]
        assert kinds.count(SpanKind.OBSERVATION) == 1 and kinds.count(SpanKind.ACTION) == 2  # random text:
        assert kinds[1] in POLICY_KINDS and kinds[-1] == SpanKind.ACTION  # a plan may hold a <thought>
    assert engine.num_free == engine.max_batch


def test_alfworld_expert_forced_stage1(alf, tok):
    """Stage-1 shape: expert plans (external) + the expert as executor -> every episode succeeds."""
    tasks, envs = alf
    batch = collect(tasks, ForcedPolicy(expert_turn), envs, tok, planner=ExpertPlans(), max_turns=40,
                    progress=False)
    _check(batch, 4)
    assert batch.statuses == ["success"] * 4
    for e in batch.episodes:
        assert e.won and e.format_errors == 0
        kinds = [s.kind for s in e.spans]
        assert SpanKind.PLAN not in kinds and kinds.count(SpanKind.EXTERNAL_PLAN) == e.num_turns
        assert e.spans[1].text.startswith("<global_plan>Step 1: Go to")  # expert_plan_steps wording


def _jvm_pool(factory, **kw):
    return EnvPool(factory, 1, kw, reset_timeout=300.0, start_timeout=300.0)


def test_twx_one_episode_sampled_and_forced(engine, tok):
    pytest.importorskip("textworld_express")
    from pilotrl_jax.envs.twx_env import SMALL_PARAMS

    with _jvm_pool("pilotrl_jax.envs.twx_env:TWXEnv", step_limit=50) as pool:
        seed = pool.envs[0].call("seeds", "coin", "train", SMALL_PARAMS["coin"])[0]
        task = Task("twx", f"twx-coin-train-{seed}", "coin", "train",
                    {"game": "coin", "seed": int(seed), "fold": "train", "params": SMALL_PARAMS["coin"]})
        sampled = collect([task], engine, pool, tok, max_turns=2, max_plan_tokens=32, max_action_tokens=32,
                          progress=False)
        _check(sampled, 1)
        assert sampled.statuses == ["max_turns"], [(e.status, e.error) for e in sampled.episodes]
        forced = collect([task], ForcedPolicy(expert_turn), pool, tok, max_turns=30, progress=False)
        _check(forced, 1)
        assert forced.statuses == ["success"] and forced.episodes[0].score == 1.0, \
            [(e.status, e.error) for e in forced.episodes]


def test_scienceworld_one_episode_sampled_and_forced(engine, tok):
    pytest.importorskip("scienceworld")
    name = "find-non-living-thing"
    with _jvm_pool("pilotrl_jax.envs.scienceworld_env:ScienceWorldEnv", step_limit=50) as pool:
        var = sorted(pool.envs[0].call("variations", name, "train"))[0]
        task = Task("scienceworld", f"sciworld-{name}-{var}", name, "train", {"task_name": name, "variation": var})
        sampled = collect([task], engine, pool, tok, max_turns=2, max_plan_tokens=32, max_action_tokens=32,
                          progress=False)
        _check(sampled, 1)
        assert sampled.statuses == ["max_turns"], [(e.status, e.error) for e in sampled.episodes]
        forced = collect([task], ForcedPolicy(expert_turn), pool, tok, mode="react", replan=None, max_turns=40,
                         progress=False)
        _check(forced, 1)
        assert forced.statuses == ["success"] and forced.episodes[0].won, [(e.status, e.error) for e in forced.episodes]


def test_short_thought_style_demos_cite_the_step_in_fewer_tokens_and_still_win(alf, tok):
    """agent.thought_style="short": the expert's thought is just the plan step it carries out
    ("Step 2."); the episodes win exactly as with the full sentence, parse without format errors,
    take fewer tokens."""
    import functools

    from pilotrl_jax.rollout.policies import executor_text

    tasks, envs = alf
    full = collect(tasks, ForcedPolicy(expert_turn), envs, tok, max_turns=40, progress=False)
    short = collect(tasks, ForcedPolicy(functools.partial(expert_turn, thought="short")), envs, tok, max_turns=40,
                    progress=False)
    assert full.statuses == short.statuses == ["success"] * 4
    for a, b in zip(full.episodes, short.episodes):
        assert a.num_turns == b.num_turns and b.format_errors == 0 and b.length < a.length
        acts = [s.text for s in b.spans if s.kind == SpanKind.ACTION]
        assert all(t.startswith("<thought>Step ") and t.split("</thought>")[0][-1] == "." for t in acts)
        assert [t.split("<action>")[1] for t in acts] == [
            t.split("<action>")[1] for t in (s.text for s in a.spans if s.kind == SpanKind.ACTION)]
    assert executor_text("go to desk 1", 1, "short") == "<thought>Step 2.</thought><action>go to desk 1</action>"
    assert executor_text("go to desk 1", None) == (
        "<thought>According to Step 1 of the global plan, I should go to desk 1.</thought><action>go to desk 1</action>")
    for gone in ("tiny", "quote"):
        with pytest.raises(ValueError, match=f"thought style '{gone}' is unknown.*thought_style"):
            executor_text("look", 0, gone)


def test_react_demonstrations_cite_no_plan():
    """A ReAct demonstration's thought names the next action, never a global plan the episode does not have."""
    from pilotrl_jax.rollout.policies import executor_text

    for style in ("full", "short"):
        assert executor_text("go to desk 1", 1, style, mode="react") == (
            "<thought>Next, I should go to desk 1.</thought><action>go to desk 1</action>")
    assert "Step 2" in executor_text("go to desk 1", 1, "short", mode="adaplan")
