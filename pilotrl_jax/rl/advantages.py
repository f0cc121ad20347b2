"""Advantage estimators: small pure jnp functions on padded arrays, behind a registry.

Outcome estimators (`grpo`, `rloo`) take one scalar score per episode and a group layout, and
broadcast the episode's advantage to its trained tokens. `gae` takes token rewards and critic values.
All per-token arrays are [B, T], aligned with input_ids; `mask` is 1.0 on trained tokens.

Group layout: either `scores` of shape [n_groups, G] (rows of the batch are group-major: row
b = g * G + i), or `scores` [B] with `group_ids` [B] int (ids in [0, num_groups); -1 = a row that
belongs to no group: advantage 0, not counted in any statistic). Without num_groups, ids may be any
non-negative ints (e.g. global task indices); with num_groups they must lie in [0, num_groups).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

ADVANTAGES: dict[str, Callable] = {}
OUTCOME_ESTIMATORS = ("grpo", "rloo")  # per-episode score -> same advantage on every trained token


def register_advantage(name: str):
    """Decorator: add an estimator to ADVANTAGES under `name`."""

    def deco(fn):
        if name in ADVANTAGES:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGES[name] = fn
        return fn

    return deco


def get_advantage_fn(name: str) -> Callable:
    """The estimator registered as `name`, or a ValueError listing the known names."""
    try:
        return ADVANTAGES[name]
    except KeyError:
        raise ValueError(f"advantage estimator {name!r} is unknown; expected one of {sorted(ADVANTAGES)}") from None


def _flatten_groups(scores, group_ids, num_groups):
    """Return (scores [B], group_ids [B], num_groups) from either layout."""
    scores = jnp.asarray(scores, jnp.float32)
    if scores.ndim == 2:
        if group_ids is not None:
            raise ValueError("scores is [n_groups, G]; pass group_ids=None (the layout already gives the groups)")
        n, g = scores.shape
        return scores.reshape(-1), jnp.repeat(jnp.arange(n, dtype=jnp.int32), g), n
    if scores.ndim != 1:
        raise ValueError(f"scores has shape {scores.shape}; expected [B] with group_ids, or [n_groups, G]")
    if group_ids is None:
        raise ValueError("scores is [B]; pass group_ids [B] (or reshape scores to [n_groups, G])")
    group_ids = jnp.asarray(group_ids, jnp.int32)
    if group_ids.shape != scores.shape:
        raise ValueError(f"group_ids has shape {group_ids.shape}; expected {scores.shape} like scores")
    if num_groups is None:  # arbitrary ids (e.g. global task indices): map them to 0..n-1 first
        group_ids = dense_group_ids(group_ids)
        num_groups = scores.shape[0]
    return scores, group_ids, int(num_groups)


def dense_group_ids(group_ids):
    """Map arbitrary int group ids [B] to dense ids in [0, B) (jit-safe); negative ids stay -1 (no group)."""
    group_ids = jnp.asarray(group_ids, jnp.int32)
    valid = group_ids >= 0
    big = jnp.iinfo(jnp.int32).max
    keyed = jnp.where(valid, group_ids, big)
    _, inv = jnp.unique(keyed, return_inverse=True, size=group_ids.shape[0], fill_value=big)
    return jnp.where(valid, inv.reshape(group_ids.shape), -1)


def _group_sums(x, group_ids, num_groups):
    """Per-row sum of x over the row's group (0 for rows with group id -1)."""
    valid = group_ids >= 0
    gid = jnp.where(valid, group_ids, num_groups)  # invalid rows go to a dropped extra segment
    s = jax.ops.segment_sum(jnp.where(valid, x, 0.0), gid, num_segments=num_groups + 1)
    return jnp.where(valid, s[gid], 0.0)


def _group_offsets(x, group_ids, num_groups):
    """x minus its group's minimum (0 for rows with group id -1).

    Statistics are taken of these offsets, not of x: a group whose scores are all equal then has
    offsets of exactly 0, so its mean, its deviations and its std are exactly 0 for any score value
    (float32 sums of e.g. 16 x 0.9 are not exact, and the residual divided by (std + eps) is not small)."""
    valid = group_ids >= 0
    gid = jnp.where(valid, group_ids, num_groups)
    lo = jax.ops.segment_min(jnp.where(valid, x, jnp.inf), gid, num_segments=num_groups + 1)
    return jnp.where(valid, x - lo[gid], 0.0)


def _broadcast(adv_rows, mask):
    """Episode advantages [B] times the token mask [B, T]."""
    mask = jnp.asarray(mask, jnp.float32)
    if mask.ndim != 2 or mask.shape[0] != adv_rows.shape[0]:
        raise ValueError(f"mask has shape {mask.shape}; expected [B, T] with B={adv_rows.shape[0]}")
    return adv_rows[:, None] * mask


def group_normalize(scores, group_ids=None, num_groups=None, eps: float = 1e-6, std: Optional[str] = "unbiased"):
    """Per-episode GRPO advantage [B]: (R - group mean) / (group std + eps).

    std: "unbiased" (divides by n-1, as torch.std in verl's GRPO; the default), "biased" (by n), or
    None (no division: Dr.GRPO). A group of one episode, and a group with equal scores, gives exactly 0.
    """
    if std not in ("unbiased", "biased", None):
        raise ValueError(f"std={std!r}; expected 'unbiased', 'biased' or None")
    x, gid, n = _flatten_groups(scores, group_ids, num_groups)
    x = _group_offsets(x, gid, n)
    ones = jnp.ones_like(x)
    cnt = _group_sums(ones, gid, n)
    mean = _group_sums(x, gid, n) / jnp.maximum(cnt, 1.0)
    centered = jnp.where(gid >= 0, x - mean, 0.0)
    if std is None:
        return centered
    ss = _group_sums(centered**2, gid, n)
    denom = jnp.maximum(cnt - 1.0, 1.0) if std == "unbiased" else jnp.maximum(cnt, 1.0)
    return centered / (jnp.sqrt(ss / denom) + eps)


@register_advantage("grpo")
def grpo(scores, mask, group_ids=None, num_groups=None, eps: float = 1e-6, std: Optional[str] = "unbiased"):
    """GRPO token advantages [B, T]: the episode's group-normalized score on each trained token."""
    return _broadcast(group_normalize(scores, group_ids, num_groups, eps, std), mask)


def leave_one_out(scores, group_ids=None, num_groups=None):
    """Per-episode RLOO advantage [B]: R_i - mean of the other episodes of its group (0 if alone or all equal)."""
    x, gid, n = _flatten_groups(scores, group_ids, num_groups)
    x = _group_offsets(x, gid, n)
    cnt = _group_sums(jnp.ones_like(x), gid, n)
    tot = _group_sums(x, gid, n)
    others = (tot - x) / jnp.maximum(cnt - 1.0, 1.0)
    return jnp.where((gid >= 0) & (cnt > 1), x - others, 0.0)


@register_advantage("rloo")
def rloo(scores, mask, group_ids=None, num_groups=None):
    """RLOO token advantages [B, T]: the leave-one-out advantage on each trained token."""
    return _broadcast(leave_one_out(scores, group_ids, num_groups), mask)


@register_advantage("gae")
def gae(rewards, values, mask, gamma: float = 1.0, lam: float = 1.0):
    """GAE over trained tokens only: returns (advantages [B, T], returns [B, T]).

    The reverse recursion visits tokens with mask 1; tokens with mask 0 (prompt, observations,
    padding) are skipped: the next value and the running advantage carry through them unchanged,
    so the last action token of turn k bootstraps from the first action token of turn k+1.
    Rewards on mask-0 tokens are ignored (place them on a trained token). After the last trained
    token the value is 0 (episode end). returns = advantages + values on trained tokens, 0 elsewhere.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    values = jnp.asarray(values, jnp.float32)
    mask = jnp.asarray(mask, jnp.float32)
    if not (rewards.shape == values.shape == mask.shape) or rewards.ndim != 2:
        raise ValueError(
            f"gae needs rewards, values, mask of one shape [B, T]; got {rewards.shape}, {values.shape}, {mask.shape}"
        )

    def step(carry, xs):
        next_v, last_gae = carry
        r, v, m = xs
        delta = r + gamma * next_v - v
        a = delta + gamma * lam * last_gae
        on = m > 0
        return (jnp.where(on, v, next_v), jnp.where(on, a, last_gae)), jnp.where(on, a, 0.0)

    B = rewards.shape[0]
    init = (jnp.zeros((B,), jnp.float32), jnp.zeros((B,), jnp.float32))
    _, adv_t = jax.lax.scan(step, init, (rewards.T, values.T, mask.T), reverse=True)
    adv = adv_t.T
    return adv, (adv + values) * mask


def whiten(x, mask, eps: float = 1e-8, shift_mean: bool = True):
    """Normalize x over masked tokens: (x - mean) / sqrt(unbiased var + eps); 0 off-mask.

    With shift_mean=False the mean is added back (scale only)."""
    x = jnp.asarray(x, jnp.float32)
    mask = jnp.asarray(mask, jnp.float32)
    n = mask.sum()
    mean = (x * mask).sum() / jnp.maximum(n, 1.0)
    var = (((x - mean) * mask) ** 2).sum() / jnp.maximum(n - 1.0, 1.0)
    out = (x - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask
