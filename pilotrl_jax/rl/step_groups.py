"""Step-level group advantages for multi-turn agents (GiGPO's second level; Feng et al. 2025).

GRPO gives every turn of an episode the same advantage, so the one turn that made a group's episodes
differ shares its credit with the dozen turns that did not. Episodes of the same task pass through
the same environment states again and again: across the group (they share prefixes) and within one
episode (a rejected command leaves the state as it was). Grouping the turns taken from one state
(an "anchor state") and normalizing their discounted returns within that group compares the actions
taken from the same state, which is the credit a multi-turn agent needs.

Pure NumPy over ragged per-episode lists; the trainer turns the result into per-token advantage terms.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Sequence

import numpy as np

STEP_NORMS = ("std", "mean")


def discounted_returns(rewards, gamma: float) -> np.ndarray:
    """R_t = sum_{k >= t} gamma^(k - t) r_k for one episode's per-turn rewards (float64)."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma={gamma}; expected a discount in [0, 1] (GiGPO: 0.95)")
    r = np.asarray(rewards, np.float64)
    out = np.zeros_like(r)
    acc = 0.0
    for t in range(len(r) - 1, -1, -1):
        acc = r[t] + gamma * acc
        out[t] = acc
    return out


def step_group_advantages(keys: Sequence[Sequence[Hashable]], returns: Sequence[Sequence[float]],
                          norm: str = "std", eps: float = 1e-6) -> list[np.ndarray]:
    """Per-turn advantages: each turn's return minus the mean return of every turn (of any episode)
    with the same anchor key, divided by that group's std (`norm="std"`, unbiased) or not (`"mean"`).

    keys[i][t] / returns[i][t]: episode i's turn t. A key seen once, or a group whose returns are all
    equal, gives 0 (no comparison, no credit)."""
    if norm not in STEP_NORMS:
        raise ValueError(f"norm={norm!r}; expected one of {STEP_NORMS}")
    if len(keys) != len(returns):
        raise ValueError(f"{len(keys)} key lists but {len(returns)} return lists; expected one of each per episode")
    groups: dict = defaultdict(list)
    for i, (ks, rs) in enumerate(zip(keys, returns)):
        if len(ks) != len(rs):
            raise ValueError(f"episode {i}: {len(ks)} anchor keys but {len(rs)} returns; expected one of each per turn")
        for t, k in enumerate(ks):
            groups[k].append((i, t, float(rs[t])))
    out = [np.zeros(len(r), np.float32) for r in returns]
    for members in groups.values():
        if len(members) < 2:
            continue
        vals = np.array([m[2] for m in members])
        vals = vals - vals.min()  # equal returns give offsets of exactly 0, so exactly 0 advantage
        centered = vals - vals.mean()
        if norm == "std":
            sd = vals.std(ddof=1)
            centered = centered / (sd + eps) if sd > 0 else np.zeros_like(centered)
        for (i, t, _), a in zip(members, centered):
            out[i][t] = a
    return out
