"""Reward math against plain NumPy references, edge cases and config errors."""
import numpy as np
import pytest

from pilotrl_jax.rewards.shaping import (EpisodeSummary, RewardConfig, compute_rewards, format_term, outcome_reward,
                                         overlong_term)


def _ref_overlong(L, lmax, b, clip):
    out = []
    for x in L:
        r = -(x - (lmax - b)) / b
        r = min(r, 0.0)
        if clip:
            r = max(r, -1.0)
        out.append(r)
    return np.array(out)


@pytest.mark.parametrize("clip", [True, False])
def test_overlong_matches_reference(clip):
    rng = np.random.default_rng(0)
    L = np.concatenate([rng.integers(0, 20000, 200), [0, 11264, 11265, 14336, 14337, 30000]])
    got = overlong_term(L, 14336, 3072, clip)
    np.testing.assert_allclose(got, _ref_overlong(L, 14336, 3072, clip), rtol=1e-6, atol=1e-6)
    # Boundaries: no penalty up to Lmax - B, -1 at Lmax.
    assert overlong_term([11264], 14336, 3072)[0] == 0.0
    np.testing.assert_allclose(overlong_term([14336], 14336, 3072)[0], -1.0)
    np.testing.assert_allclose(overlong_term([12800], 14336, 3072)[0], -0.5)


def test_outcome_and_format_terms():
    won = np.array([True, False, True, False])
    score = np.array([0.2, 0.7, 1.5, -0.3])
    np.testing.assert_array_equal(outcome_reward(won, score, "won"), [1, 0, 1, 0])
    np.testing.assert_allclose(outcome_reward(won, score, "score"), [0.2, 0.7, 1.0, 0.0])
    ferr = np.array([0, 1, 3, 20])
    np.testing.assert_allclose(format_term(ferr, -0.1, "any"), [0, -0.1, -0.1, -0.1], rtol=1e-6)
    np.testing.assert_allclose(format_term(ferr, -0.1, "per_error", -1.0), [0, -0.1, -0.3, -1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="outcome"):
        outcome_reward(won, score, "graded")


def test_compute_rewards_matches_reference_on_random_batches():
    rng = np.random.default_rng(1)
    n = 300
    won = rng.random(n) < 0.4
    score = np.where(won, 1.0, rng.random(n))
    ferr = rng.integers(0, 3, n) * (rng.random(n) < 0.3)
    lens = rng.integers(100, 16000, n)
    judged = rng.random(n) < 0.7
    ok = judged & (rng.random(n) < 0.8)
    plan = rng.random(n)
    eps = [EpisodeSummary(won=bool(won[i]), score=float(score[i]), format_errors=int(ferr[i]), response_len=int(lens[i]),
                          plan_score=float(plan[i]) if ok[i] else None,
                          plan_score_raw=float(1 + 4 * plan[i]) if ok[i] else None,
                          judge_ok=bool(ok[i]) if judged[i] else None) for i in range(n)]
    for cfg in [RewardConfig(), RewardConfig(outcome="score", plan_weight=0.5),
                RewardConfig(overlong=False, format_penalty=0.0, plan_weight=1.0, plan_scale="raw"),
                RewardConfig(max_response_len=4096, overlong_buffer=1024, overlong_clip=False, format_mode="per_error")]:
        out = compute_rewards(eps, cfg)
        o = won.astype(float) if cfg.outcome == "won" else np.clip(score, 0, 1)
        f = (np.where(ferr > 0, cfg.format_penalty, 0.0) if cfg.format_mode == "any"
             else np.maximum(ferr * cfg.format_penalty, cfg.format_floor))
        ov = _ref_overlong(lens, cfg.max_response_len, cfg.overlong_buffer, cfg.overlong_clip) if cfg.overlong else 0.0
        term = plan if cfg.plan_scale == "unit" else 1 + 4 * plan
        # No groups given: the batch is one group, so a failed judgement gets the mean term of the ok ones.
        p = np.where(ok, term, np.where(judged, term[ok].mean(), 0.0)) * cfg.plan_weight
        np.testing.assert_allclose(out.reward, o + f + ov + p, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.components["overlong"], ov + np.zeros(n), rtol=1e-5, atol=1e-5)
        assert out.reward.dtype == np.float32 and out.reward.shape == (n,)
        assert out.metrics["reward/judge_failures"] == int((judged & ~ok).sum())
        assert out.metrics["reward/judged"] == int(judged.sum())
        np.testing.assert_allclose(out.metrics["reward/mean"], out.reward.mean(), rtol=1e-5)
        np.testing.assert_allclose(out.metrics["reward/success_rate"], won.mean())


def test_failed_judgement_takes_its_groups_mean_plan_term():
    """A failed judgement scores as its GRPO group's judged episodes on average, not as the worst plan (0)."""
    cfg = RewardConfig(plan_weight=1.0)
    worst = dict(won=False, plan_score=0.0, plan_score_raw=1.0, judge_ok=True)
    good = dict(won=False, plan_score=0.75, plan_score_raw=4.0, judge_ok=True)
    ok_half = dict(won=False, plan_score=0.25, plan_score_raw=2.0, judge_ok=True)
    failed = dict(won=False, judge_ok=False)
    out = compute_rewards([good, failed, worst, ok_half, dict(won=True), failed, failed, failed],
                          cfg, groups=["a", "a", "a", "b", "b", "b", "c", "c"])
    # a: mean(0.75, 0.0); b: mean(0.25) (the unjudged episode is not averaged in); c: nobody judged, all 0.
    np.testing.assert_allclose(out.reward, [0.75, 0.375, 0.0, 0.25, 1.0, 0.25, 0.0, 0.0])
    assert out.reward[1] > out.reward[2]  # a timeout is not the worst plan
    assert out.components["plan_ok"].tolist() == [True, False, True, True, False, False, False, False]
    assert out.components["judge_failed"].tolist() == [False, True, False, False, False, True, True, True]
    assert out.metrics["reward/judge_failures"] == 4 and out.metrics["reward/judged"] == 7
    np.testing.assert_allclose(out.metrics["reward/plan_score"], 1.0 / 3)  # failures not averaged in
    # Raw scale: a failure is its group's mean of 1..5, never 0 (below the scale).
    raw = compute_rewards([good, failed, worst], RewardConfig(plan_weight=1.0, plan_scale="raw"), groups=[7, 7, 7])
    np.testing.assert_allclose(raw.reward, [4.0, 2.5, 1.0])
    # Without groups the batch is one group.
    np.testing.assert_allclose(compute_rewards([good, failed, ok_half], cfg).reward, [0.75, 0.5, 0.25])
    with pytest.raises(ValueError, match="groups has 2 ids for 3 episodes"):
        compute_rewards([good, failed, worst], cfg, groups=[0, 1])


def test_empty_batch_and_bad_inputs():
    out = compute_rewards([], RewardConfig())
    assert out.reward.shape == (0,) and out.metrics["reward/mean"] == 0.0
    with pytest.raises(ValueError, match="format_penalty"):
        RewardConfig(format_penalty=0.1)
    with pytest.raises(ValueError, match="overlong_buffer"):
        RewardConfig(overlong_buffer=0)
    with pytest.raises(ValueError, match="outcome"):
        RewardConfig(outcome="binary")
    with pytest.raises(ValueError, match="EpisodeSummary fields"):
        compute_rewards([{"success": True}])
    with pytest.raises(TypeError, match="summarize_episode"):
        compute_rewards([1.0])
    with pytest.raises(ValueError, match=">= 0"):
        compute_rewards([dict(won=True, response_len=-1)])


def test_invalid_action_term_counts_rejected_actions_and_format_errors():
    from pilotrl_jax.agent.spans import Span, SpanKind
    from pilotrl_jax.rewards.shaping import invalid_term, rejected_action, summarize_episode

    np.testing.assert_allclose(invalid_term([0, 1, 4, 30], -0.05, -0.5), [0, -0.05, -0.2, -0.5], rtol=1e-6)
    np.testing.assert_array_equal(invalid_term([0, 3], 0.0, -0.5), [0, 0])
    assert rejected_action("Nothing happens.") and not rejected_action("You arrive at desk 1.")

    class Ep:  # the fields summarize_episode reads from an AgentEpisode
        final_info = {"won": False}
        status = "max_turns"
        format_errors = 1
        spans = [Span(SpanKind.PROMPT, [1, 2], text="task: you see nothing happens here"),
                 Span(SpanKind.ACTION, [3]), Span(SpanKind.OBSERVATION, [4], text="Nothing happens."),
                 Span(SpanKind.ACTION, [5]), Span(SpanKind.OBSERVATION, [6], text="You arrive at desk 1."),
                 Span(SpanKind.ACTION, [7]), Span(SpanKind.OBSERVATION, [8], text="Observation: Nothing happens.")]

    s = summarize_episode(Ep())
    assert s.invalid_actions == 3  # two rejected actions (the prompt does not count) + one format error
    cfg = RewardConfig(invalid_action_penalty=-0.05, format_penalty=0.0, overlong=False)
    out = compute_rewards([s, dict(won=True), dict(won=False, invalid_actions=40)], cfg)
    np.testing.assert_allclose(out.reward, [-0.15, 1.0, -0.5], rtol=1e-6)
    np.testing.assert_allclose(out.metrics["reward/invalid_actions"], (3 + 0 + 40) / 3)
    assert compute_rewards([s], RewardConfig()).reward[0] == np.float32(-0.1)  # off by default: format term only
    with pytest.raises(ValueError, match="invalid_action_penalty"):
        RewardConfig(invalid_action_penalty=0.05)
    with pytest.raises(ValueError, match="invalid_actions"):
        compute_rewards([dict(won=True, invalid_actions=-1)])
