"""Loss masks from span kinds, and placement of rewards on tokens.

Conventions shared by the whole `rl` package: every per-token array is [B, T] and aligned with
`input_ids` (entry t is about token t). A token's log-prob comes from the logits at t-1, so
position 0 is never trained; masks are float32 (1.0 = trained token, 0.0 = skipped).
"""
from __future__ import annotations

from typing import Iterable, Union

import jax.numpy as jnp

from pilotrl_jax.agent.spans import POLICY_KINDS, TRAINABLE_NAMES, SpanKind

KindLike = Union[SpanKind, int, str]


def _kind_ids(trained_kinds: Iterable[KindLike]) -> tuple[int, ...]:
    """Normalise kind names / SpanKind / ints to a tuple of int ids, with a clear error."""
    if isinstance(trained_kinds, (str, int, SpanKind)):
        trained_kinds = (trained_kinds,)
    out = []
    for k in trained_kinds:
        if isinstance(k, str):
            if k not in TRAINABLE_NAMES:
                raise ValueError(
                    f"trained_kinds has {k!r}; expected a subset of {sorted(TRAINABLE_NAMES)} "
                    f"or SpanKind members"
                )
            out.append(int(TRAINABLE_NAMES[k]))
        else:
            ik = int(k)
            if ik not in {int(s) for s in POLICY_KINDS}:
                raise ValueError(
                    f"trained_kinds has kind id {ik} ({SpanKind(ik).name if ik in SpanKind._value2member_map_ else '?'}); "
                    f"only policy kinds {[s.name for s in POLICY_KINDS]} can be trained"
                )
            out.append(ik)
    if not out:
        raise ValueError("trained_kinds is empty; pass e.g. ('action',) or ('plan', 'action')")
    return tuple(sorted(set(out)))


def loss_mask(kind_ids: jnp.ndarray, trained_kinds: Iterable[KindLike]) -> jnp.ndarray:
    """Float mask [B, T]: 1.0 where the token's kind is one of `trained_kinds`, else 0.0."""
    ids = _kind_ids(trained_kinds)
    kind_ids = jnp.asarray(kind_ids)
    m = jnp.zeros(kind_ids.shape, bool)
    for k in ids:
        m = m | (kind_ids == k)
    # Position 0 has no predicting logits; it is never trained.
    m = m.at[..., 0].set(False)
    return m.astype(jnp.float32)


def last_token_index(mask: jnp.ndarray) -> jnp.ndarray:
    """Index [B] of the last nonzero entry of each row of `mask`; -1 for an all-zero row."""
    mask = jnp.asarray(mask) > 0
    T = mask.shape[-1]
    pos = jnp.where(mask, jnp.arange(T), -1)
    return pos.max(axis=-1)


def place_episode_rewards(scores: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Token rewards [B, T]: scores[b] on the last masked token of row b, 0 elsewhere (and on empty rows)."""
    scores = jnp.asarray(scores, jnp.float32)
    mask = jnp.asarray(mask)
    if scores.shape != mask.shape[:1]:
        raise ValueError(f"scores has shape {scores.shape}; expected [B]={mask.shape[:1]} (one per row of mask)")
    last = last_token_index(mask)
    T = mask.shape[-1]
    onehot = (jnp.arange(T)[None, :] == last[:, None]) & (last[:, None] >= 0)
    return onehot.astype(jnp.float32) * scores[:, None]
