"""Rollouts on the tiny world: spans == sampler tokens, masks, statuses, determinism, fuzzing."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pilotrl_jax.agent.spans import POLICY_KINDS, SpanKind
from pilotrl_jax.envs.tiny import TinyEnv
from pilotrl_jax.models import llama
from pilotrl_jax.rollout import (STATUSES, EndpointPlans, ExpertPlans, ForcedPolicy, RolloutBatch, RolloutConfig,
                                 RolloutRunner, SamplerPolicy, bucket_length, collect, expert_turn, fuzz_turn)

SHORT = dict(max_turns=3, max_plan_tokens=24, max_action_tokens=24, progress=False)


def _envs(n=8, **kw):
    return [TinyEnv(**kw) for _ in range(n)]


@pytest.fixture(scope="module")
def sampled(tiny_engine, tiny_tok, tiny_tasks, recording_policy):
    """One sampled rollout (3 tasks x 2) with the engine tokens of every episode recorded."""
    pol = recording_policy(tiny_engine, temperature=1.0)
    batch = RolloutRunner(pol, _envs(), tiny_tok, RolloutConfig(group_size=2, seed=3, **SHORT)).run(tiny_tasks[:3])
    return batch, pol


def test_spans_equal_sampler_tokens_and_masks(sampled):
    batch, pol = sampled
    assert len(batch) == 6 and [e.group_id for e in batch.episodes] == [0, 0, 1, 1, 2, 2]
    assert [e.sample for e in batch.episodes] == [0, 1] * 3
    by_seed = pol.released
    assert len(by_seed) == 6
    arr = batch.to_arrays()
    B, T = arr["input_ids"].shape
    assert B == 6 and T == bucket_length(max(e.length for e in batch.episodes)) and T & (T - 1) == 0
    for b, e in enumerate(batch.episodes):
        seq = [t for s in e.spans for t in s.token_ids]
        assert seq == by_seed[e.seed]  # what the sampler conditioned on, token for token
        n = e.length
        assert arr["lengths"][b] == n
        np.testing.assert_array_equal(arr["input_ids"][b, :n], seq)
        assert (arr["input_ids"][b, n:] == 0).all() and (arr["kind_ids"][b, n:] == 0).all()
        np.testing.assert_array_equal(arr["attention_mask"][b], (np.arange(T) < n).astype(np.int32))
        kinds = [int(s.kind) for s in e.spans for _ in s.token_ids]
        np.testing.assert_array_equal(arr["kind_ids"][b, :n], kinds)
        assert e.spans[0].kind == SpanKind.PROMPT
        pol_mask = np.isin(arr["kind_ids"][b], [int(k) for k in POLICY_KINDS])
        assert (arr["sampler_logprobs"][b][~pol_mask] == 0).all()
        assert (arr["sampler_logprobs"][b][pol_mask] < 0).all()
        for s in e.spans:
            assert (s.logprobs is not None) == (s.kind in POLICY_KINDS)
        assert e.status == "max_turns" and e.num_turns == 3 and not e.won
    assert arr["status"].tolist() == [STATUSES.index("max_turns")] * 6
    assert arr["group_ids"].tolist() == [0, 0, 1, 1, 2, 2]
    assert batch.stats["generate_calls"] > 0 and 0 < batch.stats["model_busy"] <= 1


def test_sampler_logprobs_match_a_full_forward(sampled, tiny_model):
    """The stored log-probs are the model's log-probs of the stored tokens (alignment check)."""
    batch, _ = sampled
    cfg, params = tiny_model
    arr = batch.to_arrays()
    b = 0
    n = int(arr["lengths"][b])
    logits = llama.forward(cfg, params, jnp.asarray(arr["input_ids"][b:b + 1]))[0]
    lp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    ref = lp[np.arange(n - 1), arr["input_ids"][b, 1:n]]
    on = np.isin(arr["kind_ids"][b, 1:n], [int(k) for k in POLICY_KINDS])
    np.testing.assert_allclose(arr["sampler_logprobs"][b, 1:n][on], ref[on], atol=2e-4)


def test_deterministic_given_seed_and_schedule(sampled, tiny_engine, tiny_tok, tiny_tasks):
    batch, _ = sampled
    again = collect(tiny_tasks[:3], tiny_engine, _envs(), tiny_tok, group_size=2, seed=3, **SHORT)
    a, b = batch.to_arrays(), again.to_arrays()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    lockstep = collect(tiny_tasks[:3], tiny_engine, _envs(), tiny_tok, group_size=2, seed=3, num_cohorts=1, **SHORT)
    np.testing.assert_array_equal(lockstep.to_arrays()["input_ids"], a["input_ids"])
    other = collect(tiny_tasks[:3], tiny_engine, _envs(), tiny_tok, group_size=2, seed=4, **SHORT)
    assert not np.array_equal(other.to_arrays()["input_ids"], a["input_ids"])
    assert tiny_engine.num_free == tiny_engine.max_batch  # every row released


def test_more_episodes_than_rows_and_envs(tiny_engine, tiny_tok, tiny_tasks):
    """12 episodes through 6 envs: slots are reused as episodes finish."""
    batch = collect(tiny_tasks, tiny_engine, _envs(6), tiny_tok, group_size=2, seed=1, **SHORT)
    assert len(batch) == 12 and batch.stats["slots"] == 6
    assert all(e.status == "max_turns" for e in batch.episodes)
    assert tiny_engine.num_free == tiny_engine.max_batch


def test_forced_expert_succeeds(tiny_tok, tiny_tasks):
    for mode, replan in [("adaplan", "every_step"), ("adaplan", "on_demand"), ("adaplan", "static"), ("react", None)]:
        batch = collect(tiny_tasks, ForcedPolicy(expert_turn), _envs(4), tiny_tok, group_size=2, mode=mode,
                        replan=replan, max_turns=20, progress=False)
        assert batch.statuses == ["success"] * 12, (mode, replan)
        for e in batch.episodes:
            assert e.won and e.score == 1.0 and e.format_errors == 0 and e.num_turns >= 1
            kinds = [s.kind for s in e.spans]
            assert kinds[-1] == SpanKind.ACTION  # the winning action ends the sequence
            assert (SpanKind.PLAN in kinds) == (mode == "adaplan")
            # a ReAct demonstration's thoughts cite no global plan (it has none)
            said = tiny_tok.decode([t for s in e.spans if s.kind == SpanKind.ACTION for t in s.token_ids])
            assert ("global plan" in said) == (mode == "adaplan"), (mode, said)
            if replan == "every_step":
                assert kinds.count(SpanKind.PLAN) == e.num_turns


def test_env_factory(tiny_tok, tiny_tasks):
    """envs may be a factory: envs are built lazily (one per live episode) and closed at the end."""
    built = []

    def make():
        built.append(TinyEnv())
        return built[-1]

    b = collect(tiny_tasks, ForcedPolicy(expert_turn), make, tiny_tok, group_size=2, max_live=3, max_turns=20,
                progress=False)
    assert b.statuses == ["success"] * 12 and len(built) == 3 and all(e._game is None for e in built)


def test_statuses_env_done_max_turns_budget_format_errors(tiny_tok, tiny_tasks):
    look = ForcedPolicy(lambda ctx: "<global_plan>Step 1: look</global_plan>" if ctx.request.kind == SpanKind.PLAN
                        else "<thought>Step 1.</thought><action>look</action>")
    b = collect(tiny_tasks[:2], look, _envs(2, max_steps=2), tiny_tok, max_turns=5, progress=False)
    assert b.statuses == ["env_done"] * 2 and all(e.num_turns == 2 and not e.won for e in b.episodes)
    b = collect(tiny_tasks[:2], look, _envs(2), tiny_tok, max_turns=4, progress=False)
    assert b.statuses == ["max_turns"] * 2 and all(e.num_turns == 4 for e in b.episodes)
    b = collect(tiny_tasks[:2], ForcedPolicy(expert_turn), _envs(2), tiny_tok, token_budget=560, progress=False)
    assert b.statuses == ["budget"] * 2
    for e in b.episodes:
        assert e.length <= 560 and e.spans[-1].kind in POLICY_KINDS
        assert e.agent.spans == e.spans and e.agent.status == "budget" and e.agent.final_info
    junk = ForcedPolicy(lambda ctx: "no tags at all")
    b = collect(tiny_tasks[:2], junk, _envs(2), tiny_tok, max_turns=10, max_format_errors=3, progress=False)
    assert b.statuses == ["format_errors"] * 2 and all(e.format_errors == 3 for e in b.episodes)


def test_plan_ending_on_eos_continues_in_a_new_assistant_message(tiny_tok, tiny_tasks):
    """A plan generation that ends on the end-of-turn token (no </global_plan>) closed the assistant message:
    the executor's generation starts a new one (the template's header, a PROMPT span); the spans keep their
    kinds and equal the tokens the policy was fed and wrote (the runner's verify_tokens check)."""
    eos = tiny_tok.convert_tokens_to_ids("<|im_end|>")

    def turn(ctx):
        if ctx.request.kind == SpanKind.PLAN:
            return ctx.episode.chat.encode("<global_plan>Step 1: look") + [eos]
        return "<thought>Step 1.</thought><action>look</action>"

    b = collect(tiny_tasks[:1], ForcedPolicy(turn, needs_expert=False), _envs(1), tiny_tok, max_turns=2,
                progress=False)
    e = b.episodes[0]
    assert e.status == "max_turns" and e.num_turns == 2 and e.format_errors == 2  # the two unclosed plans
    P, A, O, H = SpanKind.PLAN, SpanKind.ACTION, SpanKind.OBSERVATION, SpanKind.PROMPT
    assert [s.kind for s in e.spans] == [H, P, H, A, O, P, H, A]
    text = tiny_tok.decode([t for s in e.spans for t in s.token_ids], skip_special_tokens=False)
    assert text.count("Step 1: look<|im_end|>\n<|im_start|>assistant\n<thought>") == 2
    assert e.spans[2].text == "\n<|im_start|>assistant\n" and e.spans[2].logprobs is None  # template, not policy


def test_reset_failure_is_an_empty_env_error_row(tiny_tok, tiny_tasks):
    import dataclasses

    broken = dataclasses.replace(tiny_tasks[1], payload={"rooms": []})  # TinyEnv.reset raises ValueError
    b = collect([tiny_tasks[0], broken], ForcedPolicy(expert_turn), _envs(2), tiny_tok, max_turns=20, progress=False)
    assert b.statuses == ["success", "env_error"]
    bad = b.episodes[1]
    assert bad.length == 0 and bad.agent is None and "payload" in bad.error and not bad.won
    arr = b.to_arrays()
    assert arr["lengths"].tolist() == [b.episodes[0].length, 0] and arr["attention_mask"][1].sum() == 0


def test_budget_cuts_a_long_generation(tiny_tok, tiny_tasks):
    """A generation cut by the budget (not by the per-turn cap) ends the episode with budget."""
    long_plan = ForcedPolicy(lambda ctx: "<global_plan>" + "Step 1: look around the room. " * 40 + "</global_plan>")
    b = collect(tiny_tasks[:1], long_plan, _envs(1), tiny_tok, token_budget=520, max_plan_tokens=400,
                progress=False)
    e = b.episodes[0]
    assert e.status == "budget" and e.length == 520 and e.spans[-1].kind == SpanKind.PLAN


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fuzzed_outputs_never_crash(tiny_tok, tiny_tasks, seed):
    pol = ForcedPolicy(fuzz_turn(seed, len(tiny_tok)), needs_expert=False)
    for replan in ("every_step", "on_demand"):
        b = collect(tiny_tasks, pol, _envs(4), tiny_tok, group_size=2, replan=replan, max_turns=6,
                    max_action_tokens=30, max_format_errors=5 if seed == 2 else None, progress=False, seed=seed)
        assert len(b) == 12 and set(b.statuses) <= set(STATUSES)
        assert all(e.length > 0 and e.format_errors > 0 for e in b.episodes)
        b.to_arrays()


def test_fuzz_through_the_engine(tiny_engine, tiny_tok, tiny_tasks):
    """High-temperature random sampling with on_demand plans: ragged endings, all rows released."""
    b = collect(tiny_tasks[:4], SamplerPolicy(tiny_engine, temperature=2.0), _envs(4), tiny_tok,
                replan="on_demand", max_turns=4, max_action_tokens=24, token_budget=600, progress=False, seed=7)
    assert set(b.statuses) <= {"max_turns", "budget"} and tiny_engine.num_free == tiny_engine.max_batch


def test_external_plans_expert_and_endpoint(tiny_tok, tiny_tasks):
    b = collect(tiny_tasks[:3], ForcedPolicy(expert_turn), _envs(3), tiny_tok, planner=ExpertPlans(),
                max_turns=20, progress=False)
    assert b.statuses == ["success"] * 3
    for e in b.episodes:
        kinds = [s.kind for s in e.spans]
        assert SpanKind.PLAN not in kinds and kinds.count(SpanKind.EXTERNAL_PLAN) == e.num_turns
        assert all(k == "external_plan" for _, k, _ in e.plan_history)
    seen = []

    def complete(messages):
        seen.append(messages)
        if len(seen) % 2:
            raise ConnectionError("endpoint down")
        return "Sure.\n<global_plan>Step 1: look\nStep 2: win</global_plan>"

    planner = EndpointPlans(complete, max_workers=2)
    b = collect(tiny_tasks[:2], ForcedPolicy(expert_turn), _envs(2), tiny_tok, planner=planner, max_turns=20,
                progress=False)
    assert b.statuses == ["success"] * 2 and planner.errors
    steps = {st for e in b.episodes for _, _, st in e.plan_history}
    assert ("look", "win") in steps  # replies parsed; failed calls fell back or kept the plan
    assert seen[0][0]["role"] == "system" and "Your task is to" in seen[0][1]["content"]


def test_batch_helpers_and_jsonl(sampled, tmp_path):
    batch, _ = sampled
    longest = max(e.length for e in batch.episodes)
    arr = batch.to_arrays(bucket=128)
    assert arr["input_ids"].shape[1] == 128 * -(-longest // 128)
    assert batch.to_arrays(pad_to=2048)["input_ids"].shape == (6, 2048)
    with pytest.raises(ValueError, match="pad_to"):
        batch.to_arrays(pad_to=longest - 1)
    with pytest.raises(ValueError, match="bucket"):
        batch.to_arrays(bucket="pow3")
    assert bucket_length(1) == 64 and bucket_length(65) == 128 and bucket_length(130, 128) == 256
    path = tmp_path / "roll.jsonl"
    batch.to_jsonl(str(path))
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    assert len(rows) == 6 and rows[0]["spans"][0]["kind"] == "prompt" and rows[0]["status"] == "max_turns"
    assert sum(s["n_tokens"] for s in rows[0]["spans"]) == rows[0]["length"]
    s = batch.summary()
    assert s["episodes"] == 6 and s["statuses"]["max_turns"] == 6
    with pytest.raises(ValueError, match="no episodes"):
        RolloutBatch([]).to_arrays()


def test_errors_name_the_bad_input(tiny_engine, tiny_tok, tiny_tasks):
    with pytest.raises(ValueError, match="group_size"):
        RolloutConfig(group_size=0)
    with pytest.raises(ValueError, match="replan"):
        RolloutConfig(replan="sometimes")
    with pytest.raises(ValueError, match="token_budget"):
        RolloutRunner(tiny_engine, _envs(1), tiny_tok, RolloutConfig(token_budget=4096))
    with pytest.raises(ValueError, match="unknown option"):
        collect(tiny_tasks, tiny_engine, _envs(1), tiny_tok, groupsize=2)
    with pytest.raises(ValueError, match="tasks is empty"):
        collect([], tiny_engine, _envs(1), tiny_tok)
    with pytest.raises(TypeError, match="envs"):
        collect(tiny_tasks, tiny_engine, [], tiny_tok)
    with pytest.raises(ValueError, match="react"):
        RolloutRunner(tiny_engine, _envs(1), tiny_tok, RolloutConfig(mode="react", replan=None), planner=ExpertPlans())


def test_checkpoint_planner_on_a_second_engine(tiny_engine, tiny_tok, tiny_tasks):
    """A frozen checkpoint as the stage-1 planner (random weights: malformed plans fall back / keep the plan)."""
    from pilotrl_jax.rollout import CheckpointPlans
    from pilotrl_jax.rollout.plans import FALLBACK_PLAN

    planner = CheckpointPlans(tiny_engine, tiny_tok, max_new_tokens=16)
    b = collect(tiny_tasks[:2], ForcedPolicy(expert_turn), _envs(2), tiny_tok, planner=planner, max_turns=20,
                progress=False)
    assert b.statuses == ["success"] * 2 and tiny_engine.num_free == tiny_engine.max_batch
    for e in b.episodes:
        assert [s.kind for s in e.spans].count(SpanKind.EXTERNAL_PLAN) >= 1
        assert e.plan_history[0][2] == FALLBACK_PLAN


def test_expert_turn_names_the_plan_step_the_expert_carries_out():
    from types import SimpleNamespace

    from pilotrl_jax.envs.base import ExpertActions

    def turn(expert, kind=SpanKind.ACTION):
        ctx = SimpleNamespace(episode=SimpleNamespace(env="alfworld", noop_action="look"), expert=expert,
                              request=SimpleNamespace(kind=kind))
        return expert_turn(ctx)

    plan = ["Find the mug: check cabinet 1.", "Take the mug.", "Put the mug in/on sinkbasin 1."]
    assert turn(ExpertActions(["take mug 1 from cabinet 1"], plan, step=1)) == (
        "<thought>According to Step 2 of the global plan, I should take mug 1 from cabinet 1.</thought>"
        "<action>take mug 1 from cabinet 1</action>")
    assert "Step 3 of" in turn(ExpertActions(["go to sinkbasin 1"], plan, step=2))
    assert "Step 1 of" in turn(["go to cabinet 1"])  # an expert that does not say which step
    assert turn(ExpertActions(["go to cabinet 1"], plan, step=0), SpanKind.PLAN).startswith("<global_plan>Step 1: Find")
