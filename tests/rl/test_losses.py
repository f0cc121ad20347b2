"""Losses, log-probs, KL and metrics against plain NumPy references."""
import numpy as np
import pytest

from pilotrl_jax.rl import losses as L
from pilotrl_jax.rl import metrics as M


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _mask(rng, B, T):
    m = (rng.random((B, T)) < 0.6).astype(np.float32)
    m[:, 0] = 0
    m[0] = 0
    m[1] = 0
    m[1, 3] = 1
    return m


@pytest.mark.parametrize("temp", [1.0, 0.6])
def test_token_logprobs_and_entropy(temp):
    rng = np.random.default_rng(0)
    B, T, V = 3, 6, 11
    logits = rng.normal(size=(B, T, V)).astype(np.float32) * 3
    ids = rng.integers(0, V, size=(B, T)).astype(np.int32)
    ref_lp = np.zeros((B, T), np.float32)
    ref_h = np.zeros((B, T), np.float32)
    for b in range(B):
        for t in range(1, T):
            ls = _np_log_softmax(logits[b, t - 1] / temp)
            ref_lp[b, t] = ls[ids[b, t]]
            ref_h[b, t] = -(np.exp(ls) * ls).sum()
    lp = np.asarray(L.token_logprobs(logits, ids, temp))
    h = np.asarray(L.token_entropy(logits, temp))
    np.testing.assert_allclose(lp, ref_lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h, ref_h, rtol=1e-5, atol=1e-5)
    lp2, h2 = L.token_logprobs_and_entropy(logits, ids, temp)
    np.testing.assert_allclose(np.asarray(lp2), lp, atol=1e-6)
    np.testing.assert_allclose(np.asarray(h2), h, atol=1e-6)


def _np_ppo(lp, old, adv, el, eh, c):
    r = np.exp(lp - old)
    out = np.zeros_like(lp)
    for i in np.ndindex(lp.shape):
        a = adv[i]
        loss = max(-a * r[i], -a * min(max(r[i], 1 - el), 1 + eh))
        if c is not None and a < 0:
            loss = min(loss, -a * c)
        out[i] = loss
    return out, r


@pytest.mark.parametrize("mode", L.AGG_MODES)
@pytest.mark.parametrize("dual", [3.0, None])
def test_ppo_loss_matches_numpy(mode, dual):
    rng = np.random.default_rng(1)
    B, T = 6, 10
    old = rng.normal(size=(B, T)).astype(np.float32) - 2
    lp = old + rng.normal(size=(B, T)).astype(np.float32) * 0.8  # many ratios beyond clip and dual clip
    adv = rng.normal(size=(B, T)).astype(np.float32)
    m = _mask(rng, B, T)
    el, eh = 0.2, 0.28
    tok, r = _np_ppo(lp, old, adv, el, eh, dual)
    if mode == "token-mean":
        ref = (tok * m).sum() / m.sum()
    else:
        rows = [(tok[b] * m[b]).sum() / (m[b].sum() if mode == "seq-mean-token-mean" else 1) for b in range(B) if m[b].sum() > 0]
        ref = np.mean(rows)
    loss, met = L.ppo_policy_loss(lp, old, adv, m, el, eh, dual, mode)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    fin = M.finalize(met)
    sel = m > 0
    np.testing.assert_allclose(fin["pg_clipfrac_high"], ((adv > 0) & (r > 1 + eh))[sel].mean(), rtol=1e-6)
    np.testing.assert_allclose(fin["pg_clipfrac_low"], ((adv < 0) & (r < 1 - el))[sel].mean(), rtol=1e-6)
    if dual:
        assert fin["pg_clipfrac_dual"] > 0
        np.testing.assert_allclose(fin["pg_clipfrac_dual"], ((adv < 0) & (r > dual))[sel].mean(), rtol=1e-6)
    np.testing.assert_allclose(fin["ratio"], r[sel].mean(), rtol=1e-5)
    np.testing.assert_allclose(fin["moved_frac_old"], (np.abs(lp - old) > 1.0)[sel].mean(), rtol=1e-6)
    assert 0 < fin["moved_frac_old"] < 1


@pytest.mark.parametrize("mode", L.AGG_MODES)
def test_micro_batch_sums_are_exact(mode):
    rng = np.random.default_rng(2)
    B, T = 8, 7
    x = rng.normal(size=(B, T)).astype(np.float32)
    m = _mask(rng, B, T)
    full = float(L.aggregate(x, m, mode))
    den = L.agg_denominator(m, mode)
    parts = sum(float(L.aggregate(x[i : i + 2], m[i : i + 2], mode, den)) for i in range(0, B, 2))
    np.testing.assert_allclose(parts, full, rtol=1e-5)
    # metric pairs merge exactly
    a = {"x": M.masked_pair(x[:3], m[:3])}
    b = {"x": M.masked_pair(x[3:], m[3:])}
    np.testing.assert_allclose(M.finalize(M.merge(a, b))["x"], (x * m).sum() / m.sum(), rtol=1e-5)
    assert M.finalize({"x": M.pair(0.0, 0.0)})["x"] == 0.0
    with pytest.raises(ValueError, match="token-mean"):
        L.aggregate(x, m, "token_mean")


def test_kl_estimators():
    rng = np.random.default_rng(3)
    lp = rng.normal(size=(4, 5)).astype(np.float32)
    ref = rng.normal(size=(4, 5)).astype(np.float32)
    d = lp - ref
    np.testing.assert_allclose(np.asarray(L.kl_estimate(lp, ref, "k1")), d, atol=1e-6)
    np.testing.assert_allclose(np.asarray(L.kl_estimate(lp, ref, "k2")), 0.5 * d**2, atol=1e-6)
    np.testing.assert_allclose(np.asarray(L.kl_estimate(lp, ref, "k3")), np.exp(-d) - 1 + d, rtol=1e-5)
    assert np.all(np.asarray(L.kl_estimate(lp, ref, "k3")) >= 0)
    m = _mask(rng, 4, 5)
    r = rng.normal(size=(4, 5)).astype(np.float32)
    new_r, _ = L.fold_kl_into_token_rewards(r, lp, ref, m, 0.1, "k1")
    np.testing.assert_allclose(np.asarray(new_r), r - 0.1 * d * m, atol=1e-6)
    s = rng.normal(size=4).astype(np.float32)
    new_s, _ = L.fold_kl_into_scores(s, lp, ref, m, 0.1, "k2")
    np.testing.assert_allclose(np.asarray(new_s), s - 0.1 * (0.5 * d**2 * m).sum(-1), rtol=1e-5)
    with pytest.raises(ValueError, match="k3"):
        L.kl_estimate(lp, ref, "k4")


def test_clipped_value_loss():
    rng = np.random.default_rng(4)
    v = rng.normal(size=(5, 6)).astype(np.float32)
    old = v + rng.normal(size=(5, 6)).astype(np.float32) * 0.5
    ret = rng.normal(size=(5, 6)).astype(np.float32)
    m = _mask(rng, 5, 6)
    vc = old + np.clip(v - old, -0.2, 0.2)
    tok = 0.5 * np.maximum((v - ret) ** 2, (vc - ret) ** 2)
    loss, met = L.clipped_value_loss(v, old, ret, m, 0.2)
    np.testing.assert_allclose(float(loss), (tok * m).sum() / m.sum(), rtol=1e-5)
    sel = m > 0
    np.testing.assert_allclose(M.finalize(met)["vf_clipfrac"], ((vc - ret) ** 2 > (v - ret) ** 2)[sel].mean(), rtol=1e-6)
    loss2, _ = L.clipped_value_loss(v, old, ret, m, None)
    np.testing.assert_allclose(float(loss2), (0.5 * (v - ret) ** 2 * m).sum() / m.sum(), rtol=1e-5)


def test_token_mean_pushes_down_tokens_every_episode_shares_when_failures_are_longer():
    """Why multi-turn configs use seq-mean-token-mean: a GRPO group whose failed episodes are longer
    (they run to the turn limit) gives the format tokens every turn repeats a net negative push under
    token-mean, and none when each episode's tokens are averaged first."""
    import jax
    import jax.numpy as jnp

    # one won episode of 6 turns (A=+1.5) and three failed ones of 12 turns (A=-0.5): the group's
    # advantages sum to zero; every turn has one shared format token (say "</action>") at logp 0.
    turns = [6, 12, 12, 12]
    adv_per_ep = [1.5, -0.5, -0.5, -0.5]
    T = max(turns)
    mask = jnp.array([[1.0] * n + [0.0] * (T - n) for n in turns])
    adv = jnp.array([[a] * T for a in adv_per_ep])

    def grad_of_shared_token(mode):
        f = lambda lp: L.ppo_policy_loss(lp, jnp.zeros_like(lp), adv, mask, agg_mode=mode)[0]
        g = jax.grad(f)(jnp.zeros((4, T)))
        return float((g * mask).sum())  # d loss / d logp, summed over the shared token's occurrences

    assert grad_of_shared_token("token-mean") > 0.05  # descent lowers the shared token's log-prob
    assert abs(grad_of_shared_token("seq-mean-token-mean")) < 1e-6
