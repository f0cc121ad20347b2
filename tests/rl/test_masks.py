"""Masks and reward placement against plain NumPy loops."""
import numpy as np
import pytest

from pilotrl_jax.agent.spans import SpanKind
from pilotrl_jax.rl import masks


def _random_kinds(rng, B=6, T=17):
    k = rng.integers(0, 6, size=(B, T)).astype(np.int32)
    k[0] = SpanKind.PROMPT  # a row with no policy tokens
    k[1, :] = SpanKind.PROMPT
    k[1, 5] = SpanKind.ACTION  # single-token turn
    return k


def test_loss_mask_matches_numpy():
    rng = np.random.default_rng(0)
    k = _random_kinds(rng)
    for trained in [("action",), ("plan",), ("plan", "action"), (SpanKind.ACTION,)]:
        ids = [int(SpanKind[t.upper()]) if isinstance(t, str) else int(t) for t in trained]
        ref = np.isin(k, ids).astype(np.float32)
        ref[:, 0] = 0
        np.testing.assert_array_equal(np.asarray(masks.loss_mask(k, trained)), ref)
    assert np.asarray(masks.loss_mask(k, ("action",)))[0].sum() == 0


def test_loss_mask_rejects_bad_kinds():
    with pytest.raises(ValueError, match="plans"):
        masks.loss_mask(np.zeros((1, 3), np.int32), ("plans",))
    with pytest.raises(ValueError, match="OBSERVATION"):
        masks.loss_mask(np.zeros((1, 3), np.int32), (SpanKind.OBSERVATION,))


def test_episode_rewards_on_last_token():
    rng = np.random.default_rng(1)
    k = _random_kinds(rng)
    m = np.asarray(masks.loss_mask(k, ("plan", "action")))
    s = rng.normal(size=k.shape[0]).astype(np.float32)
    out = np.asarray(masks.place_episode_rewards(s, m))
    ref = np.zeros_like(m)
    for b in range(m.shape[0]):
        idx = np.nonzero(m[b])[0]
        if len(idx):
            ref[b, idx[-1]] = s[b]
    np.testing.assert_allclose(out, ref)
    assert out[0].sum() == 0  # all-masked row
    assert out[1, 5] == s[1]  # single-token turn
