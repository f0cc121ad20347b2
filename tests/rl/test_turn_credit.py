"""GiGPO's step-level credit on episodes (rl.turn_credit): wasted turns, anchor states, per-turn
rewards and the per-token placement of the step-group advantages."""
import numpy as np
import pytest

from pilotrl_jax.rl.ppo_config import PPOConfig


def test_wasted_turns_flag_rejected_commands_and_malformed_turns():
    from pilotrl_jax.agent.adaplan import TurnResult
    from pilotrl_jax.agent.spans import Span, SpanKind
    from pilotrl_jax.rl.turn_credit import wasted_turns

    def turn(kind, bad=False):
        return TurnResult(kind, None, None if kind == SpanKind.PLAN else "look", bad)

    class Ep:  # the fields wasted_turns reads from an AgentEpisode
        spans = [Span(SpanKind.PROMPT, [1, 2]), Span(SpanKind.PLAN, [3, 3, 3]),
                 Span(SpanKind.ACTION, [4, 4]), Span(SpanKind.OBSERVATION, [5], text="Observation: Nothing happens."),
                 Span(SpanKind.ACTION, [6, 6, 6]), Span(SpanKind.OBSERVATION, [7], text="You arrive at desk 1."),
                 Span(SpanKind.ACTION, [8]), Span(SpanKind.OBSERVATION, [9], text="You arrive at bed 1."),
                 Span(SpanKind.ACTION, [10, 10])]  # the last turn ended the episode: no observation
        turns = [turn(SpanKind.PLAN, bad=True), turn(SpanKind.ACTION), turn(SpanKind.ACTION),
                 turn(SpanKind.ACTION, bad=True), turn(SpanKind.ACTION)]

    assert wasted_turns(Ep()) == [True, False, True, False]  # a malformed plan is not an executor turn

    class Broken(Ep):
        turns = Ep.turns[:2]

    with pytest.raises(ValueError, match="action spans but 1 executor turns"):
        wasted_turns(Broken())


def _stepped_episode(actions, observations, scores=None):
    """An AgentEpisode-shaped object: a prompt, then one ACTION span (+ observation) per command."""
    from pilotrl_jax.agent.adaplan import TurnResult
    from pilotrl_jax.agent.spans import Span, SpanKind

    class Ep:
        pass

    e = Ep()
    e.spans = [Span(SpanKind.PROMPT, [1, 2])]
    e.turns, e.actions = [], list(actions)
    for k, (a, o) in enumerate(zip(actions, observations)):
        e.spans.append(Span(SpanKind.ACTION, [10 + k] * (k + 1)))
        e.turns.append(TurnResult(SpanKind.ACTION, None, a, False))
        if o is not None:
            e.spans.append(Span(SpanKind.OBSERVATION, [5], text=o))
    e.turn_scores = list(scores or [])
    return e


def test_anchor_keys_and_turn_rewards_of_an_episode():
    from pilotrl_jax.rl.turn_credit import anchor_keys, turn_rewards

    e = _stepped_episode(["take key 1 from desk 1", "go to  Desk 1", "take key 1 from desk 1", "look"],
                         ["Nothing happens.", "You arrive at desk 1.", "You pick up the key 1.", None],
                         scores=[0.0, 0.0, 0.5])
    # a rejected command leaves the state as it was: turns 0 and 1 act from the same state
    assert anchor_keys(e, 7) == [(7, ()), (7, ()), (7, ("go to desk 1",)), (7, ("go to desk 1", "take key 1 from desk 1"))]
    np.testing.assert_allclose(turn_rewards(e, 0.5, from_scores=True), [0.0, 0.0, 0.5, 0.0])  # earned at the take
    np.testing.assert_allclose(turn_rewards(e, 1.0), [0.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(turn_rewards(e, -0.4), [0.0, 0.0, 0.0, 0.0])  # never a penalty
    e.actions = e.actions[:3]
    with pytest.raises(ValueError, match="4 executor turns but 3 env actions"):
        anchor_keys(e, 0)


def test_step_credit_sits_on_each_turn_s_action_tokens():
    from pilotrl_jax.agent.spans import SpanKind, flatten_spans
    from pilotrl_jax.rl.turn_credit import step_advantage_token_values

    fast = _stepped_episode(["go to desk 1", "take key 1 from desk 1"], ["You arrive at desk 1.", None])
    slow = _stepped_episode(["take key 1 from desk 1", "go to desk 1", "take key 1 from desk 1"],
                            ["Nothing happens.", "You arrive at desk 1.", None])
    other = _stepped_episode(["look"], [None])
    cfg = PPOConfig(step_advantage_weight=2.0, step_gamma=0.5, step_norm="mean")
    got = step_advantage_token_values([fast, slow, None, other], [0, 0, 0, 1], [1.0, 1.0, 0.0, 1.0], cfg)
    # state () of group 0: fast turn 0 (return 0.5), slow turns 0 and 1 (0.25, 0.5) -> mean 5/12
    # state (go to desk 1,): fast turn 1 (1.0), slow turn 2 (1.0) -> 0; group 1's lone turn -> 0
    want_fast = [2 * (0.5 - 5 / 12), 0.0]
    want_slow = [2 * (0.25 - 5 / 12), 2 * (0.5 - 5 / 12), 0.0]
    for e, want, v in ((fast, want_fast, got[0]), (slow, want_slow, got[1])):
        ids, kinds = flatten_spans(e.spans)[:2]
        assert v.shape == ids.shape
        per_turn = iter(want)
        expect = np.concatenate([np.full(len(s.token_ids), next(per_turn) if s.kind == SpanKind.ACTION else 0.0)
                                 for s in e.spans])
        np.testing.assert_allclose(v, expect, atol=1e-6)
    assert got[2].shape == (0,)
    np.testing.assert_array_equal(got[3], 0.0)
    for bad, match in ((dict(step_advantage_weight=-1.0), "step_advantage_weight"), (dict(step_gamma=2.0), "step_gamma"),
                       (dict(step_norm="z"), "step_norm")):
        with pytest.raises(ValueError, match=match):
            PPOConfig(**bad)


def test_turn_credit_is_none_when_off_and_the_step_credit_in_rows_when_on():
    """turn_credit over a rollout's episodes: None at weight 0 (the plain GRPO path); else [B, T] rows of
    the per-token step credit, zero-padded, and nothing for an episode cut short by its environment."""
    from pilotrl_jax.rl.turn_credit import step_advantage_token_values, turn_credit

    class Result:  # the fields turn_credit reads from an EpisodeResult
        def __init__(self, agent, status):
            self.agent, self.status, self.group_id = agent, status, 0

    fast = _stepped_episode(["go to desk 1", "take key 1 from desk 1"], ["You arrive at desk 1.", None])
    slow = _stepped_episode(["take key 1 from desk 1", "go to desk 1", "take key 1 from desk 1"],
                            ["Nothing happens.", "You arrive at desk 1.", None])
    eps = [Result(fast, "success"), Result(slow, "success"), Result(slow, "env_error")]
    assert turn_credit(eps, [1.0, 1.0, 1.0], PPOConfig(), 16) is None
    cfg = PPOConfig(step_advantage_weight=2.0, step_gamma=0.5, step_norm="mean")
    got = turn_credit(eps, [1.0, 1.0, 1.0], cfg, 16)
    want = step_advantage_token_values([fast, slow, None], [0, 0, 0], [1.0, 1.0, 1.0], cfg)
    assert got.shape == (3, 16) and got.dtype == np.float32
    for b, w in enumerate(want):
        np.testing.assert_array_equal(got[b, :len(w)], w)
        assert not got[b, len(w):].any()
    assert got[0].any() and not got[2].any()
