"""The paged KV cache: one page pool per layer, a forward pass that reads and writes it through block tables.

Layout (`pool_structure`): per layer one [num_pages + 1, page_size, 2 * kv_heads, head_dim] array, keys at
even and values at odd combined heads (the layout `ragged_paged_attention` reads). Page 0 is the trash
page: never handed to an episode, it takes every write that must go nowhere (padding rows, finished
rows, padding slots past a row's pages) and fills the block-table entries a row has no page for, so every
page index the kernels see is valid. A row's block table [pages_per_row] maps its slot s to
(page bt[s // page_size], offset s % page_size); a token's key/value sits at slot == its position.

Attention (`paged_attention_impl`):
- `xla`: per layer, the rows' pages are gathered into a [B, W, kv, hd] view (W = the call's window, as
  the dense engine's sub-cache), and the model's own decoder block (`llama.Block`: norms, projections,
  rope, the dense cache path's masked attention, MLP) runs on it; the new tokens' keys/values are then
  written into the pool at their (page, offset). Same shapes and ops as the dense engine's window: the
  same floats (bit-identical tokens and log-probs, tested).
- `window`: per generate round (not per step), the rows' pages are gathered once into a dense
  [B, W] sub-cache of every layer, the dense engine's own prefill and decode kernels run on it, and it
  is written back into the pages: the dense engine's per-step cost (and floats), at the price of a
  transient sub-cache of every layer for the call's rows (the dense engine's gather/scatter); pages
  for a round's whole max_new_tokens are taken before it starts (the unused ones are freed after).
- `ragged`: the new keys/values are written into the pool first, then the Pallas TPU kernel
  `jax.experimental.pallas.ops.tpu.ragged_paged_attention` reads the pages directly (no view): each row
  is one sequence of T queries (kv_len = its last position + 1). TPU only.
- `auto`: ragged on TPU, xla on GPU, window on CPU.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from pilotrl_jax import sharding as sh
from pilotrl_jax.models import attention as attn_kernels
from pilotrl_jax.models import llama
from pilotrl_jax.models.config import LlamaConfig
from pilotrl_jax.traces import count_trace

PAGED_IMPLS = ("xla", "window", "ragged", "auto")
# auto: the kernel on TPU; the per-step gather (memory follows the tokens: one layer's view) on GPU; the
# per-turn gather (the dense engine's step speed; memory is plentiful) on CPU
_AUTO = {"tpu": "ragged", "gpu": "xla", "cuda": "xla"}
TRASH_PAGE = 0


def resolve_paged_impl(impl: str, on: str = None) -> str:
    """The paged attention kernel `impl` runs on backend `on` (default: the attention module's backend)."""
    if impl not in PAGED_IMPLS:
        raise ValueError(f"paged_attention_impl={impl!r}; expected one of {PAGED_IMPLS}")
    be = on or attn_kernels.backend()
    if impl == "auto":
        return _AUTO.get(be, "window")
    if impl == "ragged" and be != "tpu":  # (no CPU interpret run: see tests/sampling/test_paged.py)
        raise attn_kernels.AttentionUnavailable(
            f"paged_attention_impl='ragged' needs a TPU (backend is {be!r}): the Pallas kernel "
            "ragged_paged_attention is TPU-only; use 'xla', 'window' or 'auto'")
    return impl


def pool_structure(config: LlamaConfig, num_pages: int, page_size: int, dtype, make) -> list:
    """The page pools, one [num_pages + 1 (trash page 0), page_size, 2 * kv_heads, head_dim] leaf per layer,
    built by `make(shape, dtype)`."""
    shape = (int(num_pages) + 1, int(page_size), 2 * config.num_kv_heads, config.head_dim)
    return [make(shape, dtype) for _ in range(config.num_layers)]


def pool_bytes(config: LlamaConfig, num_pages: int, page_size: int, dtype_bytes: int) -> int:
    """Bytes of the page pools (every layer, keys and values, trash page included)."""
    return ((num_pages + 1) * page_size * 2 * config.num_kv_heads * config.head_dim * dtype_bytes
            * config.num_layers)


def _constrain(pool, config: LlamaConfig, mesh):
    """A pool kept in its placement on `mesh` (`pool_spec`); no mesh: as it is."""
    if mesh is None:
        return pool
    return jax.lax.with_sharding_constraint(pool, NamedSharding(mesh, pool_spec(config, mesh)))


def _write_slots(block_table, positions, page_size: int, window: int):
    """Flat pool slots [B, T] (page * page_size + offset) of tokens at `positions`; positions at or past
    `window` (padding and finished rows) go to the trash page."""
    nb = block_table.shape[1]
    col = jnp.clip(positions // page_size, 0, nb - 1)
    page = jnp.take_along_axis(block_table, col, axis=1)
    page = jnp.where(positions < window, page, TRASH_PAGE)
    return page * page_size + positions % page_size


def _write_pool(pool, slots, k, v):
    """The pool with keys/values [B, T, K, hd] written at flat `slots` [B, T] (interleaved k, v heads)."""
    P, ps, K2, hd = pool.shape
    kv = jnp.stack([k, v], axis=-2).reshape(k.shape[:2] + (K2, hd)).astype(pool.dtype)
    flat = pool.reshape(P * ps, K2, hd).at[slots.reshape(-1)].set(kv.reshape(-1, K2, hd))
    return flat.reshape(P, ps, K2, hd)


def gather_view(pool, block_table, window: int):
    """A row's first `window` slots as dense keys/values: ([B, W, K, hd], [B, W, K, hd]) from its pages."""
    B, nb = block_table.shape
    P, ps, K2, hd = pool.shape
    need = -(-window // ps)
    pairs = pool.reshape(P, ps, K2 // 2, 2, hd)
    bt = block_table[:, :need]

    def one(j):  # a gather of one of k (j = 0) / v (j = 1): no copy of the interleaved view
        view = jnp.take(pairs[:, :, :, j], bt, axis=0)  # [B, need, ps, K, hd]
        return view.reshape(B, need * ps, K2 // 2, hd)[:, :window]

    return one(0), one(1)


def pool_spec(config: LlamaConfig, mesh) -> P:
    """The pools' PartitionSpec on `mesh`: combined kv heads over `tensor` when it divides the kv heads (a
    chip holds its heads' keys and values of every page: block-table gathers stay on the chip), else
    replicated. Rows are not sharded (the paged engine needs data x fsdp = 1)."""
    if mesh is None:
        return P()
    spec = sh.logical_to_spec((None, None, "kv_heads", None), (1, 1, config.num_kv_heads, config.head_dim), mesh)
    heads = sh.logical_to_spec(("heads",), (config.num_heads,), mesh)
    return spec if spec[2] is not None and heads[0] == spec[2] else P()


def ragged_attention(q, pool, block_table, positions, window: int, mesh=None, spec=P()):
    """Attention of queries q [B, T, H, hd] (row b's at positions[b]) over the row's pages by the TPU kernel
    (rows are sequences of T queries, kv_len = last position + 1 (at most the block table's slots); rows
    at or past `window` are padding and read T trash slots). On a mesh: per chip over its heads (`spec`:
    the pools' PartitionSpec, `pool_spec`)."""
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention import ragged_paged_attention

    B, T, H, hd = q.shape
    last = positions[:, -1]
    real = last < window
    kv_lens = jnp.where(real, jnp.minimum(last + 1, block_table.shape[1] * pool.shape[1]), T).astype(jnp.int32)
    pages = jnp.where(real[:, None], block_table, TRASH_PAGE).astype(jnp.int32)
    cu = (jnp.arange(B + 1) * T).astype(jnp.int32)

    # the kernel looks its block sizes up by the attached device; compiling for a TPU from a CPU host (AOT),
    # give it its own defaults for TPU v5+ (128 pages, 32 queries a block)
    blocks = ({} if jax.default_backend() == "tpu" else
              dict(num_kv_pages_per_block=min(block_table.shape[1], 128), num_queries_per_block=min(B * T, 32)))

    def run(q, pool, kv_lens, pages, cu):
        out = ragged_paged_attention(q.reshape(B * T, q.shape[2], hd), pool, kv_lens, pages, cu,
                                     jnp.array([B], jnp.int32), sm_scale=1.0 / math.sqrt(hd), **blocks)
        return out.reshape(B, T, q.shape[2], hd)

    if mesh is None or mesh.size == 1:
        return run(q, pool, kv_lens, pages, cu)
    qs = P(None, None, spec[2], None) if len(spec) > 2 else P()
    return jax.shard_map(run, mesh=mesh, in_specs=(qs, spec, P(), P(), P()), out_specs=qs,
                         check_vma=False)(q, pool, kv_lens, pages, cu)


class _RaggedBlock(nn.Module):
    """A decoder layer (the params of `llama.Block`) whose attention reads the page pool with the ragged kernel."""

    config: LlamaConfig
    window: int
    mesh: Any = None

    @nn.compact
    def __call__(self, x, pool, block_table, positions, slots, cos, sin):
        c = self.config
        h = llama.RMSNorm(c, name="input_norm")(x)
        a, pool = _RaggedAttention(c, self.window, self.mesh, name="attn")(h, pool, block_table, positions, slots,
                                                                           cos, sin)
        x = x + a
        x = x + llama.MLP(c, name="mlp")(llama.RMSNorm(c, name="post_attn_norm")(x))
        return x, pool


class _RaggedAttention(nn.Module):
    """`llama.Attention`'s projections and rope (`llama.qkv_projections`); keys/values to the pool, attention
    by the ragged kernel."""

    config: LlamaConfig
    window: int
    mesh: Any = None

    @nn.compact
    def __call__(self, x, pool, block_table, positions, slots, cos, sin):
        c = self.config
        dt = llama.dtype_of(c.dtype)
        q, k, v, wo = llama.qkv_projections(self, c, x, cos, sin)
        pool = _constrain(_write_pool(pool, slots, k, v), c, self.mesh)
        out = ragged_attention(q.astype(pool.dtype), pool, block_table, positions, self.window, self.mesh,
                               pool_spec(c, self.mesh)).astype(dt)
        return jnp.einsum("bthk,hkd->btd", out, wo), pool


class PagedLlama(nn.Module):
    """The LLaMA decoder (llama.Llama's param tree, unscanned layers) over a paged KV cache."""

    config: LlamaConfig
    window: int
    impl: str  # "xla" | "ragged" (resolved)
    mesh: Any = None

    @nn.compact
    def __call__(self, input_ids, positions, pools, block_table):
        c = self.config
        dt = llama.dtype_of(c.dtype)
        ps = pools[0].shape[1]
        embed = llama._param(self, "embed", ("vocab", "embed"), (c.vocab_size, c.hidden_size),
                             nn.initializers.normal(0.02), c)
        x = jnp.take(embed, input_ids, axis=0).astype(dt)
        cos, sin = llama.rope_cos_sin(c, positions)
        slots = _write_slots(block_table, positions, ps, self.window)
        B, T = input_ids.shape
        new_pools = []
        if self.impl == "xla":
            W = self.window
            mask = jnp.arange(W)[None, None, :] <= positions[:, :, None]
            rows = jnp.arange(B)[:, None]
            read = jnp.clip(positions, 0, W - 1)
            for i in range(c.num_layers):
                ck, cv = gather_view(pools[i], block_table, W)
                x, (nk, nv) = llama.Block(c, name=f"layers_{i}")(x, (ck, cv), cos, sin, mask, positions)
                # the new tokens' keys/values, as the block wrote them into the view (cache dtype)
                new_pools.append(_constrain(_write_pool(pools[i], slots, nk[rows, read], nv[rows, read]), c,
                                            self.mesh))
        else:
            for i in range(c.num_layers):
                x, pool = _RaggedBlock(c, self.window, self.mesh, name=f"layers_{i}")(
                    x, pools[i], block_table, positions, slots, cos, sin)
                new_pools.append(pool)
        x = llama.RMSNorm(c, name="final_norm")(x)
        if c.tie_word_embeddings:
            logits = jnp.einsum("btd,vd->btv", x, embed.astype(dt))
        else:
            head = llama._param(self, "lm_head", ("embed", "vocab"), (c.hidden_size, c.vocab_size),
                                nn.initializers.normal(0.02), c)
            logits = x @ head.astype(dt)
        return logits.astype(jnp.float32), new_pools


def forward_paged(config: LlamaConfig, params, input_ids, positions, pools, block_table, *, window: int,
                  impl: str = "xla", mesh=None):
    """Run tokens [B, T] at positions [B, T] against the page pools through block tables [B, pages_per_row]
    -> (float32 logits [B, T, V], pools). Positions >= window write to the trash page (padding)."""
    if config.scan_layers:
        raise ValueError("forward_paged needs unscanned params (scan_layers=False): use "
                         "sampling.cache.decode_config / decode_params")
    if len(pools) != config.num_layers:
        raise ValueError(f"pools has {len(pools)} layers; the model has {config.num_layers}")
    if block_table.shape[1] * pools[0].shape[1] < window:
        raise ValueError(f"block_table covers {block_table.shape[1]} pages of {pools[0].shape[1]} slots, "
                         f"less than window={window}; widen the block table")
    return PagedLlama(config, int(window), impl, mesh).apply({"params": params}, jnp.asarray(input_ids, jnp.int32),
                                                      jnp.asarray(positions, jnp.int32), list(pools),
                                                      jnp.asarray(block_table, jnp.int32))


# ----------------------------------------------------------------------------- jitted steps
@functools.partial(jax.jit, static_argnames=("config", "window", "impl", "mesh"), donate_argnames=("pools",))
def paged_prefill(config, params, pools, ids, pos, block_table, *, window, impl, mesh=None):
    """Write the keys/values of tokens `ids` [B, C] at `pos` [B, C] into the rows' pages."""
    count_trace("paged_prefill")
    _, pools = forward_paged(config, params, ids, pos, pools, block_table, window=window, impl=impl, mesh=mesh)
    return pools


@functools.partial(jax.jit, static_argnames=("window",))
def gather_window(pools, block_table, *, window):
    """The rows' first `window` slots of every layer as a dense per-layer sub-cache {"k", "v": [[B, W, K, hd]]}
    (the dense engine's layout: its prefill and decode kernels run on it)."""
    count_trace("gather_window")
    views = [gather_view(pool, block_table, window) for pool in pools]
    return {"k": [k for k, _ in views], "v": [v for _, v in views]}


@functools.partial(jax.jit, donate_argnames=("pools",))
def scatter_window(pools, sub, block_table):
    """Write a dense sub-cache (`gather_window`'s layout) back into the rows' pages (slots a row has no page
    for go to the trash page)."""
    count_trace("scatter_window")
    B, W = sub["k"][0].shape[:2]
    ps = pools[0].shape[1]
    positions = jnp.broadcast_to(jnp.arange(W, dtype=jnp.int32)[None], (B, W))
    slots = _write_slots(block_table, positions, ps, block_table.shape[1] * ps)
    return [_write_pool(pool, slots, k, v) for pool, k, v in zip(pools, sub["k"], sub["v"])]


def host_block_table(page_lists, rows: int, width: int) -> np.ndarray:
    """A [rows, width] int32 block table from per-row page lists (missing entries: the trash page)."""
    bt = np.full((rows, width), TRASH_PAGE, np.int32)
    for r, pages in enumerate(page_lists):
        n = min(len(pages), width)
        bt[r, :n] = pages[:n]
    return bt
