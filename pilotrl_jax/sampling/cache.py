"""The sampler's KV cache: its layout, row copies in and out of a sub-batch, and shared-prefix copies.

Layout (`cache_structure`): with unscanned layers (what the engine decodes with) a list of one
[B, S, kv_heads, head_dim] array per layer for k and for v; a token's key/value sits at slot == its
position. Every jitted copy here takes the cache donated (updated in place) and drops writes to rows
or slots past the end (`mode="drop"`), which is how padding rows write nothing.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pilotrl_jax import sharding as sh
from pilotrl_jax.models import llama
from pilotrl_jax.models.config import LlamaConfig
from pilotrl_jax.traces import count_trace


def decode_config(config: LlamaConfig) -> LlamaConfig:
    """The config the engine decodes with: the model's, with layers unscanned (per-layer caches)."""
    return dataclasses.replace(config, scan_layers=False, remat_policy="none")


@functools.lru_cache(maxsize=16)
def _unstack_fn(dcfg: LlamaConfig, mesh):
    """The jitted scanned -> per-layer copy for one config and mesh (built once: it runs every weight sync)."""
    shardings = None if mesh is None else llama.param_shardings(dcfg, mesh)
    return jax.jit(functools.partial(llama.unstack_layers, dcfg), out_shardings=shardings)


def decode_params(config: LlamaConfig, params, mesh=None):
    """`params` of a model with `config` in the layout `decode_config(config)` reads (per layer; a copy
    when the model scans its layers), placed with that layout's shardings on `mesh`."""
    if params is None:
        return None
    dcfg = decode_config(config)
    if "layers" in params:
        return _unstack_fn(dcfg, mesh)(params)
    return params if mesh is None else jax.device_put(params, llama.param_shardings(dcfg, mesh))


def fine_bucket(n: int, min_len: int, cap: int, parts: int = 4) -> int:
    """`n` rounded up to a multiple of 1/parts of the power of two below it (at least `min_len`, at most
    `cap`): `parts` sizes per octave, so a window or chunk pads at most ~1/parts (a power of two: 2x)."""
    b = max(int(min_len), int(n), 1)
    step = max(int(min_len), (1 << (b.bit_length() - 1)) // int(parts))
    return min(int(cap), step * -(-b // step))


CACHE_AXES = ("layers", "batch", "cache_length", "kv_heads", "head_dim")


def cache_structure(config: LlamaConfig, batch: int, length: int, dtype, make) -> dict:
    """The engine's KV cache layout, leaves built by `make(shape, dtype, axes)`: with scanned layers one
    stacked [layers, B, S, kv, hd] array per k/v; unscanned, a list of one [B, S, kv, hd] per layer, so
    a layer's slots are never sliced out of a stacked array (a copy of the whole layer per call)."""
    tail = (batch, length, config.num_kv_heads, config.head_dim)
    if config.scan_layers:
        return {n: make((config.num_layers,) + tail, dtype, CACHE_AXES) for n in ("k", "v")}
    return {n: [make(tail, dtype, CACHE_AXES[1:]) for _ in range(config.num_layers)] for n in ("k", "v")}


def constrain(cache, mesh):
    """The cache with its batch dim sharded over (data, fsdp) on `mesh` (as it is; no mesh: unchanged)."""
    if mesh is None:
        return cache
    return jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x, sh.named_sharding(mesh, CACHE_AXES[-x.ndim:], x.shape)),
        cache)  # a stacked cache, or one layer's [B, S, K, Dh]


@functools.partial(jax.jit, static_argnames=("window", "mesh"))
def _gather(cache, rows, *, window, mesh):
    """Rows `rows` (out-of-range → zeros) and the first `window` slots of the cache."""
    count_trace("gather")
    # axis b = the batch axis: 1 in a stacked [L, B, S, ...] leaf, 0 in a per-layer [B, S, ...] one
    sub = jax.tree.map(lambda x: jnp.take(jax.lax.slice_in_dim(x, 0, window, axis=x.ndim - 3), rows,
                                          axis=x.ndim - 4, mode="fill", fill_value=0), cache)
    return constrain(sub, mesh)


@functools.partial(jax.jit, static_argnames=("mesh",), donate_argnames=("cache",))
def _scatter(cache, sub, rows, *, mesh):
    """Write a sub-cache back into its rows (out-of-range rows dropped)."""
    count_trace("scatter")
    out = jax.tree.map(lambda x, s: x.at[(slice(None),) * (x.ndim - 4) + (rows, slice(0, s.shape[-3]))].set(
        s, mode="drop"), cache, sub)
    return constrain(out, mesh)


@functools.partial(jax.jit, static_argnames=("mesh",), donate_argnames=("cache",))
def _put_prefix(cache, prefix, rows, *, mesh):
    """Copy row 0 of the per-layer `prefix` cache (its first min(P, S) slots) into rows `rows` of `cache`
    (out-of-range rows dropped)."""
    count_trace("put_prefix")

    def put(x, p):
        n = min(p.shape[-3], x.shape[-3])
        src = jnp.broadcast_to(p[0, :n], (rows.shape[0], n) + p.shape[2:])
        return x.at[rows, :n].set(src.astype(x.dtype), mode="drop")

    return constrain(jax.tree.map(put, cache, prefix), mesh)


def common_prefix_length(a, b) -> int:
    """How many leading tokens the sequences `a` and `b` share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
