"""Pure sampling math: temperature, top-k / top-p filters, one sampled token and its log-prob.

Log-prob convention (the one the RL loss needs): the reported log-prob of a sampled token is
`log_softmax(logits / T)[token]`, the temperature-scaled distribution *before* top-k/top-p
truncation; for greedy decoding (T = 0) it is `log_softmax(logits)[token]`, i.e. T = 1.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Sampling modes (static inside jit): greedy never draws random numbers; "sample" skips the sort.
MODES = ("greedy", "sample", "filtered")


def mode_for(temperature: float, top_k: int, top_p: float) -> str:
    """The static sampling mode for these settings."""
    if temperature == 0.0:
        return "greedy"
    return "filtered" if (top_k > 0 or top_p < 1.0) else "sample"


def check_settings(temperature: float, top_k: int, top_p: float) -> None:
    """Raise ValueError naming the bad sampling setting."""
    if not (temperature >= 0.0):
        raise ValueError(f"temperature={temperature}; expected >= 0 (0 means greedy)")
    if int(top_k) != top_k or top_k < 0:
        raise ValueError(f"top_k={top_k}; expected an integer >= 0 (0 disables top-k)")
    if not (0.0 < top_p <= 1.0):
        raise ValueError(f"top_p={top_p}; expected 0 < top_p <= 1 (1 disables top-p)")


# Candidates `filter_logits` takes with `lax.top_k` before it falls back to sorting the whole row.
FAST_CANDIDATES = 16


def filter_logits(scaled: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Mask (to -inf) tokens outside the top-k and outside the top-p nucleus of `scaled` [B, V].

    top_k <= 0 disables top-k; top_p >= 1 disables top-p. Ties at a threshold are all kept.
    The threshold comes from the `FAST_CANDIDATES` largest logits (`lax.top_k`, ~15x cheaper than a
    sort on CPU) when, in every row, they hold the whole top-k set or top_p of the mass; otherwise
    from the fully sorted rows. Both give the same mask.
    """
    V = scaled.shape[-1]
    n = min(FAST_CANDIDATES, V)
    full_lse = jax.nn.logsumexp(scaled, axis=-1, keepdims=True)
    cand = jax.lax.top_k(scaled, n)[0]  # descending
    in_cand = (top_k > 0) & (top_k <= n)  # the top-k set (which top-p renormalises over) is in cand
    cand_mass = jnp.exp(jax.nn.logsumexp(cand, axis=-1) - full_lse[:, 0])
    resolved = jnp.all(in_cand | ((top_k <= 0) & (top_p < 1.0) & (cand_mass >= top_p)))
    thresh = jax.lax.cond(resolved, lambda: _threshold(cand, top_k, top_p, full_lse),
                          lambda: _threshold(-jnp.sort(-scaled, axis=-1), top_k, top_p, full_lse))
    return jnp.where(scaled >= thresh, scaled, -jnp.inf)


def _threshold(srt: jax.Array, top_k: jax.Array, top_p: jax.Array, full_lse: jax.Array) -> jax.Array:
    """Smallest kept logit [B, 1] from `srt`, the descending first n logits of each row (n = V, or
    enough to hold the top-k set or top_p of the mass); `full_lse` is the whole row's logsumexp."""
    n = srt.shape[-1]
    idx = jnp.arange(n)[None, :]
    use_k = top_k > 0
    k = jnp.where(use_k, jnp.minimum(top_k, n), n)
    srt = jnp.where(idx < k, srt, -jnp.inf)
    kth = jnp.where(use_k, jnp.take_along_axis(srt, jnp.full((srt.shape[0], 1), k - 1), axis=-1), -jnp.inf)
    lse = jnp.where(use_k, jax.nn.logsumexp(srt, axis=-1, keepdims=True), full_lse)  # top-k renormalises
    probs = jnp.exp(srt - lse)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each sorted token
    keep_sorted = ((before < top_p) | (top_p >= 1.0)) & (idx < k)  # top_p >= 1: no float-rounding cut
    keep_sorted = keep_sorted.at[:, 0].set(True)
    thresh = jnp.min(jnp.where(keep_sorted, srt, jnp.inf), axis=-1, keepdims=True)
    return jnp.maximum(thresh, kth)


def sample_tokens(logits: jax.Array, keys: jax.Array, temperature, top_k, top_p, mode: str):
    """One token per row of float32 `logits` [B, V] with per-row PRNG `keys` [B, 2] → (tokens, logprobs)."""
    if mode == "greedy":
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        lp = jax.nn.log_softmax(logits, axis=-1)
        return tok, jnp.take_along_axis(lp, tok[:, None], axis=-1)[:, 0]
    scaled = logits / temperature
    lp = jax.nn.log_softmax(scaled, axis=-1)
    draw_from = filter_logits(scaled, top_k, top_p) if mode == "filtered" else scaled
    tok = jax.vmap(lambda k, l: jax.random.categorical(k, l))(keys, draw_from).astype(jnp.int32)
    return tok, jnp.take_along_axis(lp, tok[:, None], axis=-1)[:, 0]
