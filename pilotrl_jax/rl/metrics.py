"""Metrics as exact (sum, count) pairs, so averages over micro-batches, mini-batches and hosts are exact.

A metrics dict maps a name to a `(sum, count)` pair of float32 scalars. Add dicts with `merge`,
turn them into numbers with `finalize` (sum / count; 0 where count is 0).
"""
from __future__ import annotations

from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

Pair = tuple  # (sum, count)


def pair(total, count) -> Pair:
    """A (sum, count) pair of float32 scalars."""
    return (jnp.asarray(total, jnp.float32), jnp.asarray(count, jnp.float32))


def masked_pair(x: jnp.ndarray, mask: Optional[jnp.ndarray] = None) -> Pair:
    """(sum of x over mask, number of masked entries); mask None means all entries."""
    x = jnp.asarray(x, jnp.float32)
    if mask is None:
        return pair(x.sum(), x.size)
    mask = jnp.asarray(mask, jnp.float32)
    return pair((x * mask).sum(), mask.sum())


def scalar_pair(x, weight=1.0) -> Pair:
    """A single value as a pair (x * weight, weight)."""
    w = jnp.asarray(weight, jnp.float32)
    return pair(jnp.asarray(x, jnp.float32) * w, w)


def merge(a: Mapping[str, Pair], b: Mapping[str, Pair]) -> dict:
    """Sum two metric dicts name by name; names present in only one are kept as they are."""
    out = dict(a)
    for k, v in b.items():
        out[k] = (out[k][0] + v[0], out[k][1] + v[1]) if k in out else v
    return out


def zeros_like(m: Mapping[str, Pair]) -> dict:
    """A metric dict with the same names and all pairs (0, 0), for scan carries."""
    return jax.tree_util.tree_map(jnp.zeros_like, dict(m))


def finalize(m: Mapping[str, Pair]) -> dict:
    """Host-side: {name: sum / count} as Python floats (0.0 where count is 0)."""
    out = {}
    for k, (s, c) in m.items():
        s, c = float(np.asarray(s)), float(np.asarray(c))
        out[k] = s / c if c > 0 else 0.0
    return out
