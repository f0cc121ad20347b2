"""Token log-probs, entropy, PPO surrogate, KL estimators and value loss: pure jnp functions.

Every per-token array is [B, T] aligned with input_ids: entry t is about token t, whose
distribution comes from logits[:, t-1]; entry 0 is 0 (never trained). Loss aggregation returns a
(numerator, denominator) pair so that a mini-batch split into micro-batches gets the exact same
loss when each micro-batch divides its numerator by the mini-batch's denominator.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from pilotrl_jax.rl import metrics as M

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
KL_ESTIMATORS = {"k1": "k1", "kl": "k1", "k2": "k2", "mse": "k2", "k3": "k3", "low_var_kl": "k3"}
_MAX_LOG_RATIO = 20.0


def _shifted(logits, temperature):
    """Scaled float32 logits of positions 0..T-2 (each predicts the next token)."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}; the trainer needs T > 0 (greedy has no log-probs)")
    return logits[:, :-1].astype(jnp.float32) / temperature


def _pad_front(x):
    """Prepend a zero column so entry t is about token t."""
    return jnp.pad(x, ((0, 0), (1, 0)))


def token_logprobs(logits, input_ids, temperature: float = 1.0):
    """log softmax(logits[t-1] / T)[input_ids[t]] as [B, T] float32; entry 0 is 0."""
    if logits.ndim != 3 or logits.shape[:2] != input_ids.shape:
        raise ValueError(f"logits {logits.shape} and input_ids {input_ids.shape}; expected [B, T, V] and [B, T]")
    z = _shifted(logits, temperature)
    lse = jax.nn.logsumexp(z, axis=-1)
    tgt = jnp.take_along_axis(z, input_ids[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
    return _pad_front(tgt - lse)


def token_entropy(logits, temperature: float = 1.0):
    """Entropy of softmax(logits[t-1] / T) as [B, T] float32 (entry t: the distribution token t was drawn from)."""
    z = _shifted(logits, temperature)
    lse = jax.nn.logsumexp(z, axis=-1, keepdims=True)
    p = jnp.exp(z - lse)
    return _pad_front(lse[..., 0] - (p * z).sum(-1))


def token_logprobs_and_entropy(logits, input_ids, temperature: float = 1.0):
    """(token_logprobs, token_entropy) sharing one logsumexp."""
    if logits.ndim != 3 or logits.shape[:2] != input_ids.shape:
        raise ValueError(f"logits {logits.shape} and input_ids {input_ids.shape}; expected [B, T, V] and [B, T]")
    z = _shifted(logits, temperature)
    lse = jax.nn.logsumexp(z, axis=-1, keepdims=True)
    tgt = jnp.take_along_axis(z, input_ids[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
    p = jnp.exp(z - lse)
    ent = lse[..., 0] - (p * z).sum(-1)
    return _pad_front(tgt - lse[..., 0]), _pad_front(ent)


# ----------------------------------------------------------------------------- aggregation


def agg_terms(x, mask, mode: str = "token-mean"):
    """(numerator, denominator) of the aggregated loss; loss = numerator / denominator.

    token-mean: sum over masked tokens / number of masked tokens.
    seq-mean-token-mean: mean over rows with >=1 token of the row's token mean.
    seq-mean-token-sum: mean over rows with >=1 token of the row's token sum.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"loss_agg_mode={mode!r}; expected one of {AGG_MODES}")
    x = jnp.asarray(x, jnp.float32)
    mask = jnp.asarray(mask, jnp.float32)
    if mode == "token-mean":
        return (x * mask).sum(), mask.sum()
    row_n = mask.sum(-1)
    row_s = (x * mask).sum(-1)
    has = (row_n > 0).astype(jnp.float32)
    if mode == "seq-mean-token-mean":
        return (row_s / jnp.maximum(row_n, 1.0)).sum(), has.sum()
    return row_s.sum(), has.sum()


def agg_denominator(mask, mode: str = "token-mean"):
    """The denominator of `agg_terms` alone (for a whole mini-batch before micro-batching)."""
    return agg_terms(jnp.zeros_like(jnp.asarray(mask, jnp.float32)), mask, mode)[1]


def aggregate(x, mask, mode: str = "token-mean", denominator=None):
    """Aggregated loss: numerator / denominator (the given one, else this batch's); 0 if no tokens."""
    num, den = agg_terms(x, mask, mode)
    if denominator is not None:
        den = denominator
    return num / jnp.maximum(den, 1.0)


# ----------------------------------------------------------------------------- PPO policy loss


def ppo_token_losses(logp, old_logp, advantages, clip_eps_low=0.2, clip_eps_high=0.2, dual_clip: Optional[float] = 3.0):
    """Per-token PPO clipped surrogate [B, T] and per-token indicator dict (ratio, clip events).

    loss = max(-A r, -A clip(r, 1-eps_low, 1+eps_high)); with dual_clip c (> 1), for A < 0 the loss
    is further capped at -A c. Returned indicators: clip_low (A<0, r<1-eps_low), clip_high
    (A>0, r>1+eps_high), clip_dual (A<0 and the dual cap is active).
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip={dual_clip}; expected a value > 1 (paper: 3.0) or None to disable")
    log_ratio = jnp.clip(logp - old_logp, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = jnp.exp(log_ratio)
    a = advantages
    l1 = -a * ratio
    l2 = -a * jnp.clip(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    loss = jnp.maximum(l1, l2)
    info = {
        "ratio": ratio,
        "log_ratio": log_ratio,
        "clip_low": ((a < 0) & (ratio < 1.0 - clip_eps_low)).astype(jnp.float32),
        "clip_high": ((a > 0) & (ratio > 1.0 + clip_eps_high)).astype(jnp.float32),
    }
    if dual_clip is not None:
        l3 = -a * dual_clip
        dual_on = (a < 0) & (loss > l3)
        loss = jnp.where(a < 0, jnp.minimum(loss, l3), loss)
        info["clip_dual"] = dual_on.astype(jnp.float32)
    else:
        info["clip_dual"] = jnp.zeros_like(ratio)
    return loss, info


def ppo_policy_loss(
    logp,
    old_logp,
    advantages,
    mask,
    clip_eps_low=0.2,
    clip_eps_high=0.2,
    dual_clip: Optional[float] = 3.0,
    agg_mode: str = "token-mean",
    denominator=None,
):
    """PPO policy loss (scalar) aggregated over `mask`, and metrics as exact (sum, count) pairs."""
    tok, info = ppo_token_losses(logp, old_logp, advantages, clip_eps_low, clip_eps_high, dual_clip)
    loss = aggregate(tok, mask, agg_mode, denominator)
    lr = info["log_ratio"]
    metrics = {
        "pg_clipfrac_low": M.masked_pair(info["clip_low"], mask),
        "pg_clipfrac_high": M.masked_pair(info["clip_high"], mask),
        "pg_clipfrac_dual": M.masked_pair(info["clip_dual"], mask),
        "ratio": M.masked_pair(info["ratio"], mask),
        "approx_kl_old": M.masked_pair(kl_estimate(logp, old_logp, "k3"), mask),
        "abs_log_ratio_old": M.masked_pair(jnp.abs(lr), mask),
        # tokens whose probability moved more than e-fold from the old policy's: a robust view of the
        # collapses that dominate the mean k3 (one token at -17 nats outweighs thousands of small moves)
        "moved_frac_old": M.masked_pair((jnp.abs(lr) > 1.0).astype(jnp.float32), mask),
    }
    return loss, metrics


# ----------------------------------------------------------------------------- KL


def kl_estimate(logp, ref_logp, estimator: str = "k3"):
    """Per-token estimate of KL(pi || ref) from sampled-token log-probs: k1, k2 or k3 (Schulman).

    k1 = log r, k2 = (log r)^2 / 2, k3 = exp(-log r) - 1 + log r, with log r = logp - ref_logp
    (clipped to +-20 for k3 so exp cannot overflow)."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl estimator {estimator!r} is unknown; expected one of {sorted(KL_ESTIMATORS)}")
    est = KL_ESTIMATORS[estimator]
    d = logp - ref_logp
    if est == "k1":
        return d
    if est == "k2":
        return 0.5 * d * d
    d = jnp.clip(d, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return jnp.exp(-d) - 1.0 + d


def fold_kl_into_token_rewards(rewards, logp, ref_logp, mask, coef: float, estimator: str = "k1"):
    """Token rewards minus coef * KL estimate on masked tokens (for GAE); returns (rewards, kl pair)."""
    kl = kl_estimate(logp, ref_logp, estimator) * mask
    return rewards - coef * kl, M.masked_pair(kl, mask)


def fold_kl_into_scores(scores, logp, ref_logp, mask, coef: float, estimator: str = "k1"):
    """Episode scores [B] minus coef * summed per-token KL of the episode (for GRPO / RLOO)."""
    kl = kl_estimate(logp, ref_logp, estimator) * mask
    return scores - coef * kl.sum(-1), M.masked_pair(kl, mask)


# ----------------------------------------------------------------------------- value loss


def clipped_value_loss(values, old_values, returns, mask, clip_eps: Optional[float] = 0.2, agg_mode="token-mean", denominator=None):
    """0.5 * max((v - R)^2, (v_clip - R)^2) aggregated over mask, v_clip = old + clip(v - old, +-eps).

    clip_eps None disables clipping. Returns (loss, metrics) with vf_clipfrac and value error."""
    err = (values - returns) ** 2
    if clip_eps is None:
        tok = 0.5 * err
        clipped = jnp.zeros_like(err)
    else:
        vc = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
        errc = (vc - returns) ** 2
        tok = 0.5 * jnp.maximum(err, errc)
        clipped = (errc > err).astype(jnp.float32)
    loss = aggregate(tok, mask, agg_mode, denominator)
    metrics = {
        "vf_clipfrac": M.masked_pair(clipped, mask),
        "vf_mse": M.masked_pair(err, mask),
        "values": M.masked_pair(values, mask),
    }
    return loss, metrics
