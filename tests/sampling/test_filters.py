"""Sampling filters and token draws against plain NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pilotrl_jax.sampling import filter_logits, sample_tokens
from pilotrl_jax.sampling.filters import mode_for


def _np_filter(row, k, p):
    order = np.argsort(-row, kind="stable")
    keep = np.zeros(row.shape, bool)
    if k > 0:
        k = min(k, len(row))
        kept = order[:k]
        thresh_k = row[order[k - 1]]
    else:
        kept, thresh_k = order, -np.inf
    z = np.exp(row[kept] - row[kept].max())
    probs = z / z.sum()
    before = np.cumsum(probs) - probs
    nucleus = kept[before < p] if p < 1 else kept
    nucleus = nucleus if len(nucleus) else kept[:1]
    thresh = max(row[nucleus].min(), thresh_k)
    keep = row >= thresh
    return np.where(keep, row, -np.inf)


@pytest.mark.parametrize("k,p", [(0, 1.0), (5, 1.0), (0, 0.9), (7, 0.5), (1, 1.0), (0, 0.01), (200, 0.99)])
def test_filter_matches_numpy(k, p):
    rng = np.random.default_rng(k + int(p * 100))
    logits = rng.normal(size=(4, 50)).astype(np.float32) * 3
    logits[3, :10] = 2.5  # ties at the threshold are kept together
    got = np.asarray(filter_logits(jnp.asarray(logits), jnp.int32(k), jnp.float32(p)))
    want = np.stack([_np_filter(r, k, p) for r in logits])
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)])


def test_sample_tokens_logprobs_and_support():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(64, 30)).astype(np.float32) * 2)
    keys = jax.random.split(jax.random.PRNGKey(0), 64)
    keys = jax.random.key_data(keys) if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) else keys
    T = 0.7
    tok, lp = sample_tokens(logits, keys, jnp.float32(T), jnp.int32(3), jnp.float32(1.0), "filtered")
    ref = np.asarray(jax.nn.log_softmax(logits / T, axis=-1))[np.arange(64), np.asarray(tok)]
    np.testing.assert_allclose(np.asarray(lp), ref, atol=1e-6)  # unfiltered, temperature-scaled
    top3 = np.argsort(-np.asarray(logits), axis=-1)[:, :3]
    assert all(t in row for t, row in zip(np.asarray(tok), top3))
    g, glp = sample_tokens(logits, keys, jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0), "greedy")
    np.testing.assert_array_equal(np.asarray(g), np.asarray(logits).argmax(-1))
    np.testing.assert_allclose(np.asarray(glp), np.asarray(jax.nn.log_softmax(logits, -1)).max(-1), atol=1e-6)


def test_sampling_frequencies_follow_the_distribution():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]], jnp.float32))
    n = 4000
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(1), i))(jnp.arange(n))
    tok, _ = sample_tokens(jnp.repeat(logits, n, 0), keys, jnp.float32(1.0), jnp.int32(0), jnp.float32(0.7),
                           "filtered")
    freq = np.bincount(np.asarray(tok), minlength=4) / n
    # top-p 0.7 keeps {0.5, 0.3} (mass before token 2 is 0.8 >= 0.7), renormalised to 5/8, 3/8
    np.testing.assert_allclose(freq, [5 / 8, 3 / 8, 0, 0], atol=0.03)


def test_mode_for():
    assert mode_for(0.0, 5, 0.5) == "greedy"
    assert mode_for(1.0, 0, 1.0) == "sample"
    assert mode_for(1.0, 3, 1.0) == mode_for(1.0, 0, 0.9) == "filtered"


@pytest.mark.parametrize("k,p", [(0, 0.9), (0, 0.98), (3, 0.9), (16, 1.0), (20, 0.9), (40, 0.95), (0, 1.0)])
def test_filter_on_peaked_rows_of_a_large_vocab_matches_numpy(k, p):
    """A trained policy's rows: most mass on a few tokens (the top-k fast path), with one flat row
    and one tied row in the batch for the sorted path; both give numpy's mask."""
    rng = np.random.default_rng(k)
    logits = (rng.normal(size=(6, 1024)) * 6).astype(np.float32)
    logits[1, :] = rng.normal(size=1024).astype(np.float32) * 0.1  # flat: nucleus far past 16 tokens
    logits[2, 5:30] = logits[2].max() + 1.0  # 25 tied top tokens
    for rows in (logits[[0, 3, 4, 5]], logits):  # without / with the rows that need the full sort
        got = np.asarray(filter_logits(jnp.asarray(rows), jnp.int32(k), jnp.float32(p)))
        want = np.stack([_np_filter(r, k, p) for r in rows])
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
