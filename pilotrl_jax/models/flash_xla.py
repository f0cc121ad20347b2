"""Causal self-attention in plain XLA with a flash-style backward: `model.attention_impl="xla_flash"`.

The model's default `xla` path computes attention in blocks of queries and lets autodiff save every
block's probabilities for the backward pass: at 16 x 1024 tokens that is most of a PPO step's
5.6 GB of temporaries on CPU, and the step spends its time moving them. Here (a `jax.custom_vjp`):

- heads go ahead of the sequence once per call ([B, K, T, G, Dh]), so every block is one clean batched
  matmul (queries of the G heads sharing a kv head stacked as rows);
- the forward keeps only the output and each query's log-sum-exp (O(T) per head, as flash attention);
- the backward recomputes each block's probabilities from them and accumulates dK, dV in place.

Masking is the `xla` path's: a query reads keys at or before it that are real tokens (`key_valid`);
a query with no such key (left padding) reads all keys of its block uniformly, as the `xla` path's
softmax over equal scores does. Same maths as `xla`; float rounding differs (~1e-6 in fp32).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

_NEG = jnp.finfo(jnp.float32).min


def _blocks(T: int, chunk: int):
    """Query blocks [a, b) of `chunk` queries (one block when chunk is 0 or covers T)."""
    chunk = T if chunk <= 0 else min(chunk, T)
    return [(a, min(a + chunk, T)) for a in range(0, T, chunk)]


def _scores(qb, kb, key_valid, a, b):
    """Scaled, masked float32 scores [B, K, b-a, G, b] of queries [a, b) on keys [0, b), and the mask."""
    s = jnp.einsum("bktgd,bksd->bktgs", qb, kb, preferred_element_type=jnp.float32)
    s = s * (1.0 / math.sqrt(qb.shape[-1]))
    causal = jnp.arange(b)[None, :] <= jnp.arange(a, b)[:, None]
    mask = (causal[None] & key_valid[:, None, :b])[:, None, :, None, :]
    return jnp.where(mask, s, _NEG), mask


def _forward(q, k, v, key_valid, chunk, dt):
    """(output [B, K, T, G, Dh] in dt, [max, log-sum] [2, B, K, T, G] f32 per query, head-major q, k, v)."""
    qh = q.astype(dt).transpose(0, 2, 1, 3, 4)
    kh, vh = k.astype(dt).transpose(0, 2, 1, 3), v.astype(dt).transpose(0, 2, 1, 3)
    outs, lses = [], []
    for a, b in _blocks(q.shape[1], chunk):
        s, _ = _scores(qh[:, :, a:b], kh[:, :, :b], key_valid, a, b)
        # the max and the log-sum apart: a row with no readable key has max = float32 min, where
        # max + log(sum) rounds back to the max and would lose the 1/n of its uniform weights
        m = jnp.max(s, axis=-1)
        log_l = jnp.log(jnp.sum(jnp.exp(s - m[..., None]), axis=-1))
        p = jnp.exp(s - m[..., None] - log_l[..., None]).astype(dt)
        outs.append(jnp.einsum("bktgs,bksd->bktgd", p, vh[:, :, :b]))
        lses.append(jnp.stack([m, log_l]))
    return jnp.concatenate(outs, axis=2), jnp.concatenate(lses, axis=3), (qh, kh, vh)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def attend(q, k, v, key_valid, chunk: int, dt):
    """Causal attention: q [B, T, K, G, Dh], k/v [B, T, K, Dh], key_valid [B, T] (True = real) ->
    [B, T, K, G, Dh] in `dt`, computed in blocks of `chunk` queries; scale 1/sqrt(Dh)."""
    out, _, _ = _forward(q, k, v, key_valid, chunk, dt)
    return out.transpose(0, 2, 1, 3, 4)


def _attend_fwd(q, k, v, key_valid, chunk, dt):
    out, lse, heads = _forward(q, k, v, key_valid, chunk, dt)
    return out.transpose(0, 2, 1, 3, 4), (heads, out, lse, key_valid, tuple(jnp.zeros((0,), x.dtype) for x in (q, k, v)))


def _attend_bwd(chunk, dt, res, g):
    (qh, kh, vh), out, lse, key_valid, dtypes = res
    gh = g.astype(dt).transpose(0, 2, 1, 3, 4)
    # D_t = sum_d dO_t * O_t: the softmax backward's per-query term
    delta = jnp.sum(gh.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
    B, K, T, G, Dh = qh.shape
    # dK and dV are accumulated transposed ([B, K, Dh, T]): "d x (t g) @ (t g) x s" reads each block's
    # probabilities in the layout they are made in; "s x (t g) @ (t g) x d" had XLA on CPU copy every
    # block's [t g, s] matrix into its transpose first
    dkt = jnp.zeros((B, K, Dh, T), jnp.float32)
    dvt = jnp.zeros((B, K, Dh, T), jnp.float32)
    dqs = []
    for a, b in _blocks(T, chunk):
        s, mask = _scores(qh[:, :, a:b], kh[:, :, :b], key_valid, a, b)
        p = jnp.exp(s - lse[0, :, :, a:b, :, None] - lse[1, :, :, a:b, :, None])
        go = gh[:, :, a:b]
        dvt = dvt.at[:, :, :, :b].add(jnp.einsum("bktgd,bktgs->bkds", go, p.astype(dt),
                                                 preferred_element_type=jnp.float32))
        dp = jnp.einsum("bktgd,bksd->bktgs", go, vh[:, :, :b], preferred_element_type=jnp.float32)
        ds = jnp.where(mask, p * (dp - delta[:, :, a:b, :, None]), 0.0) * (1.0 / math.sqrt(Dh))
        ds = ds.astype(dt)
        dqs.append(jnp.einsum("bktgs,bksd->bktgd", ds, kh[:, :, :b], preferred_element_type=jnp.float32))
        dkt = dkt.at[:, :, :, :b].add(jnp.einsum("bktgd,bktgs->bkds", qh[:, :, a:b], ds,
                                                 preferred_element_type=jnp.float32))
    dq = jnp.concatenate(dqs, axis=2).transpose(0, 2, 1, 3, 4)
    dk, dv = dkt.transpose(0, 3, 1, 2), dvt.transpose(0, 3, 1, 2)
    qd, kd, vd = (x.dtype for x in dtypes)  # the inputs' dtypes, kept as empty arrays
    return (dq.astype(qd), dk.astype(kd), dv.astype(vd), None)


attend.defvjp(_attend_fwd, _attend_bwd)
