"""Advantage estimators against plain NumPy loops."""
import numpy as np
import pytest

from pilotrl_jax.rl import advantages as A


def _np_group_norm(s, g, eps, ddof):
    out = np.zeros_like(s)
    for gid in np.unique(g):
        if gid < 0:
            continue
        idx = g == gid
        x = s[idx]
        sd = x.std(ddof=ddof) if len(x) > ddof else 0.0
        out[idx] = (x - x.mean()) / (sd + eps)
    return out


def _mask(rng, B, T):
    m = (rng.random((B, T)) < 0.6).astype(np.float32)
    m[0] = 0  # all-masked row
    m[1] = 0
    m[1, 4] = 1  # single-token
    return m


@pytest.mark.parametrize("std,ddof", [("unbiased", 1), ("biased", 0)])
def test_grpo_group_ids_matches_numpy(std, ddof):
    rng = np.random.default_rng(0)
    B, T = 12, 9
    s = rng.normal(size=B).astype(np.float32)
    g = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, -1, 4], np.int32)  # group 3, 4 singletons; -1 no group
    s[5:9] = 0.7  # equal rewards -> zero advantage
    m = _mask(rng, B, T)
    out = np.asarray(A.grpo(s, m, group_ids=g, num_groups=5, eps=1e-6, std=std))
    ref = _np_group_norm(s, g, 1e-6, ddof)[:, None] * m
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert np.all(out[5:11] == 0)


def test_grpo_grid_layout_equals_group_ids():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(3, 4)).astype(np.float32)
    m = _mask(rng, 12, 7)
    a = A.grpo(s, m)
    b = A.grpo(s.reshape(-1), m, group_ids=np.repeat(np.arange(3), 4), num_groups=3)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    ref = ((s - s.mean(1, keepdims=True)) / (s.std(1, ddof=1, keepdims=True) + 1e-6)).reshape(-1)[:, None] * m
    np.testing.assert_allclose(np.asarray(a), ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="group_ids"):
        A.grpo(s.reshape(-1), m)


def test_rloo_matches_numpy():
    rng = np.random.default_rng(2)
    s = rng.normal(size=10).astype(np.float32)
    g = np.array([0, 0, 0, 0, 1, 1, 2, 3, 3, 3], np.int32)
    s[7:] = 1.0
    m = _mask(rng, 10, 6)
    ref = np.zeros(10, np.float32)
    for i in range(10):
        others = [s[j] for j in range(10) if g[j] == g[i] and j != i]
        ref[i] = s[i] - np.mean(others) if others else 0.0
    out = np.asarray(A.rloo(s, m, group_ids=g, num_groups=4))
    np.testing.assert_allclose(out, ref[:, None] * m, rtol=1e-5, atol=1e-6)
    assert np.all(out[6:] == 0)


def _np_gae(r, v, m, gamma, lam):
    B, T = r.shape
    adv = np.zeros_like(r)
    for b in range(B):
        idx = np.nonzero(m[b])[0]  # only trained tokens take part
        nxt_v, last = 0.0, 0.0
        for t in idx[::-1]:
            delta = r[b, t] + gamma * nxt_v - v[b, t]
            last = delta + gamma * lam * last
            adv[b, t] = last
            nxt_v = v[b, t]
    return adv, (adv + v) * m


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0)])
def test_gae_skips_masked_tokens(gamma, lam):
    rng = np.random.default_rng(3)
    B, T = 7, 15
    r = rng.normal(size=(B, T)).astype(np.float32)
    v = rng.normal(size=(B, T)).astype(np.float32)
    m = _mask(rng, B, T)
    adv, ret = A.gae(r, v, m, gamma, lam)
    radv, rret = _np_gae(r, v, m, gamma, lam)
    np.testing.assert_allclose(np.asarray(adv), radv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ret), rret, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(adv)[0] == 0)


def test_gae_multi_turn_bootstraps_across_observation():
    # [prompt, a, a, obs, obs, a]; reward at end; gamma=lam=1: adv_t = R - V_t on trained tokens.
    m = np.array([[0, 1, 1, 0, 0, 1]], np.float32)
    v = np.array([[9, 0.1, 0.2, 7, 7, 0.3]], np.float32)
    r = np.array([[5, 0, 0, 5, 5, 1.0]], np.float32)  # rewards on mask-0 tokens are ignored
    adv, ret = A.gae(r, v, m, 1.0, 1.0)
    np.testing.assert_allclose(np.asarray(adv)[0], [0, 0.9, 0.8, 0, 0, 0.7], atol=1e-6)
    np.testing.assert_allclose(np.asarray(ret)[0], [0, 1, 1, 0, 0, 1], atol=1e-6)


def test_whiten_matches_numpy():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 8)).astype(np.float32) * 3 + 2
    m = _mask(rng, 5, 8)
    sel = x[m > 0]
    ref = (x - sel.mean()) / np.sqrt(sel.var(ddof=1) + 1e-8) * m
    np.testing.assert_allclose(np.asarray(A.whiten(x, m)), ref, rtol=1e-4, atol=1e-5)
    ref2 = ((x - sel.mean()) / np.sqrt(sel.var(ddof=1) + 1e-8) + sel.mean()) * m
    np.testing.assert_allclose(np.asarray(A.whiten(x, m, shift_mean=False)), ref2, rtol=1e-4, atol=1e-5)


def test_registry():
    assert set(A.OUTCOME_ESTIMATORS) <= set(A.ADVANTAGES)
    assert A.get_advantage_fn("gae") is A.gae
    with pytest.raises(ValueError, match="grpo"):
        A.get_advantage_fn("ppo")


def test_arbitrary_group_ids_are_densified():
    rng = np.random.default_rng(5)
    s = rng.normal(size=6).astype(np.float32)
    m = _mask(rng, 6, 5)
    g_sparse = np.array([100, 7, 100, 7, -1, 3000], np.int32)
    g_dense = np.array([1, 0, 1, 0, -1, 2], np.int32)
    for fn in (A.grpo, A.rloo):
        a = np.asarray(fn(s, m, group_ids=g_sparse))
        b = np.asarray(fn(s, m, group_ids=g_dense, num_groups=3))
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(A.dense_group_ids(g_sparse)), [1, 0, 1, 0, -1, 2])


# Scores that float32 cannot represent exactly (0.9, 0.8, 0.1 + 0.2, a format error's -0.1, the demo's
# progress score minus wasted-turn penalties) in groups of up to 1024: a group whose scores are all equal
# carries no comparison, so every within-group estimator gives exactly 0, not a rounding residual
# inflated by the (std + eps) division (16 x 0.9 gave +0.106 each).
EQUAL_SCORES = [0.9, 0.8, -0.1, 0.1 + 0.2, 0.5 - 3 * 0.05, 1e-3, -7.3, 123.456]


@pytest.mark.parametrize("G", [2, 7, 16, 64, 1024])
@pytest.mark.parametrize("std", ["unbiased", "biased", None])
def test_grpo_equal_groups_are_exactly_zero(G, std):
    s = np.repeat(np.asarray(EQUAL_SCORES, np.float32)[:, None], G, axis=1)  # [n_groups, G]
    m = np.ones((s.size, 3), np.float32)
    out = np.asarray(A.grpo(s, m, eps=1e-6, std=std))
    assert np.array_equal(out, np.zeros_like(out)), np.abs(out).max()
    rows = np.asarray(A.group_normalize(s.reshape(-1), np.repeat(np.arange(len(EQUAL_SCORES)) * 3 + 5, G), std=std))
    assert np.array_equal(rows, np.zeros_like(rows))  # arbitrary (densified) ids too


@pytest.mark.parametrize("G", [2, 16, 1024])
def test_rloo_equal_groups_are_exactly_zero(G):
    s = np.repeat(np.asarray(EQUAL_SCORES, np.float32)[:, None], G, axis=1)
    out = np.asarray(A.leave_one_out(s))
    assert np.array_equal(out, np.zeros_like(out)), np.abs(out).max()


def test_equal_group_beside_unequal_groups():
    """An all-equal group stays exactly 0 while its neighbours keep their NumPy (float64) advantages."""
    rng = np.random.default_rng(3)
    s = np.concatenate([np.full(16, 0.9, np.float32), rng.normal(size=16).astype(np.float32),
                        np.full(16, -0.1, np.float32)])
    g = np.repeat(np.arange(3), 16).astype(np.int32)
    m = np.ones((48, 2), np.float32)
    out = np.asarray(A.grpo(s, m, group_ids=g, num_groups=3))
    assert np.array_equal(out[:16], np.zeros((16, 2))) and np.array_equal(out[32:], np.zeros((16, 2)))
    ref = _np_group_norm(s.astype(np.float64), g, 1e-6, 1)[:, None] * m
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
