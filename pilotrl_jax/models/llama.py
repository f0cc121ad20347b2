"""A Flax (linen) LLaMA-3.x decoder with logical axis names, layer scan, remat and a KV-cache path.

Parameters carry logical axis names (see `pilotrl_jax.sharding.DEFAULT_RULES`); the functional
entry points below take plain (unboxed) parameter trees:

- `init_params(config, rng)` → params
- `forward(config, params, input_ids, attention_mask=None, positions=None)` → float32 logits [B, T, V]
- `forward_hidden(...)` → final-norm hidden states [B, T, D] (for a critic head)
- `init_cache(config, batch, max_len)` and `forward_with_cache(config, params, input_ids, positions,
  cache)` → (logits, cache): tokens are written into the cache at slot == position, per row.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pilotrl_jax.models import attention as attn_kernels
from pilotrl_jax.models.projection import project
from pilotrl_jax.models.config import LlamaConfig

Params = Any


def dtype_of(name: str):
    """jnp dtype for a config dtype name."""
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


# ----------------------------------------------------------------------------- rotary embeddings
def rope_inv_freq(config: LlamaConfig) -> np.ndarray:
    """Inverse frequencies [head_dim/2] with the config's scaling (plain, linear or Llama-3.1)."""
    dim = config.head_dim
    inv = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    sc = config.rope_scaling
    if sc is None:
        return inv.astype(np.float32)
    if sc[0] == "linear":
        return (inv / sc[1]).astype(np.float32)
    _, factor, low_ff, high_ff, orig = sc
    low_wavelen = orig / low_ff
    high_wavelen = orig / high_ff
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (orig / wavelen - low_ff) / (high_ff - low_ff)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(config: LlamaConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables [B, T, head_dim] (float32) for integer positions [B, T]."""
    inv = jnp.asarray(rope_inv_freq(config))
    freqs = positions.astype(jnp.float32)[..., None] * inv[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate [B, T, H, Dh] by the half-split convention HF LLaMA uses."""
    half = x.shape[-1] // 2
    x32 = x.astype(jnp.float32)
    rot = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rot * sin[:, :, None, :]
    return out.astype(x.dtype)


# ----------------------------------------------------------------------------- modules
def _param(module: nn.Module, name: str, axes: tuple, shape: tuple, init, config: LlamaConfig):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype_of(config.param_dtype))


class RMSNorm(nn.Module):
    """Root-mean-square layer norm computed in float32, as HF LLaMA does."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        scale = _param(self, "scale", ("norm",), (x.shape[-1],), nn.initializers.ones, self.config)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.config.rms_norm_eps)
        dt = dtype_of(self.config.dtype)
        return scale.astype(dt) * y.astype(dt)


def qkv_projections(module: nn.Module, c: LlamaConfig, x, cos, sin):
    """An attention layer's params (wq, wk, wv, wo, declared in `module`) applied: (q and k with rope, v, wo),
    in the compute dtype. Shared by `Attention` and the paged sampler's ragged attention."""
    dt = dtype_of(c.dtype)
    init = nn.initializers.normal(0.02)
    D, H, K, Dh = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
    wq = _param(module, "wq", ("embed", "heads", "head_dim"), (D, H, Dh), init, c).astype(dt)
    wk = _param(module, "wk", ("embed", "kv_heads", "head_dim"), (D, K, Dh), init, c).astype(dt)
    wv = _param(module, "wv", ("embed", "kv_heads", "head_dim"), (D, K, Dh), init, c).astype(dt)
    wo = _param(module, "wo", ("heads", "head_dim", "embed"), (H, Dh, D), init, c).astype(dt)
    q = apply_rope(project(c, "btd,dhk->bthk", x, wq), cos, sin)
    k = apply_rope(project(c, "btd,dhk->bthk", x, wk), cos, sin)
    return q, k, project(c, "btd,dhk->bthk", x, wv), wo


class Attention(nn.Module):
    """Grouped-query attention with rotary embeddings and an optional KV cache."""

    config: LlamaConfig
    layer: Optional[int] = None  # set when `cache` holds every layer's slots ([layers, B, S, kv, hd])

    @nn.compact
    def __call__(self, x, cos, sin, mask, cache=None, write_pos=None):
        c = self.config
        dt = dtype_of(c.dtype)
        H, K, Dh = c.num_heads, c.num_kv_heads, c.head_dim
        B, T, _ = x.shape
        q, k, v, wo = qkv_projections(self, c, x, cos, sin)
        new_cache = None
        if cache is not None:
            ck, cv = cache
            rows = jnp.arange(B)[:, None]
            if self.layer is None:
                ck = ck.at[rows, write_pos].set(k.astype(ck.dtype), mode="drop")
                cv = cv.at[rows, write_pos].set(v.astype(cv.dtype), mode="drop")
                k, v = ck.astype(dt), cv.astype(dt)
            else:  # write into the stacked cache in place (no per-layer slice + re-stack copies)
                ck = ck.at[self.layer, rows, write_pos].set(k.astype(ck.dtype), mode="drop")
                cv = cv.at[self.layer, rows, write_pos].set(v.astype(cv.dtype), mode="drop")
                k, v = ck[self.layer].astype(dt), cv[self.layer].astype(dt)
            new_cache = (ck, cv)
        q = q.reshape(B, T, K, H // K, Dh)
        chunk = c.attention_query_chunk
        if cache is None and mask.ndim == 2:  # a kernel (config.attention_impl): mask = the real keys [B, T]
            out = attn_kernels.attend(attn_kernels.resolve(c.attention_impl, dtype=c.dtype), q, k, v, mask, dt, chunk)
        elif cache is None and 0 < chunk < T:
            out = _blocked_causal(q, k, v, mask, chunk, dt)
        else:
            out = _attend(q, k, v, mask, dt)
        return project(c, "bthk,hkd->btd", out.reshape(B, T, H, Dh), wo), new_cache


def _blocked_causal(q, k, v, mask, chunk, dt):
    """Causal self-attention in blocks of `chunk` queries (the no-cache mask never lets a query see a
    later slot): the queries of block [a, b) read only keys [0, b). Shapes as `_attend`."""
    T = q.shape[1]
    ends = [(a, min(a + chunk, T)) for a in range(0, T, chunk)]
    return jnp.concatenate([_attend(q[:, a:b], k[:, :b], v[:, :b], mask[:, a:b, :b], dt) for a, b in ends], axis=1)


def _attend(q, k, v, mask, dt):
    """Masked softmax attention: q [B, T, K, G, Dh], k/v [B, S, K, Dh], mask [B, T, S] -> [B, T, K, G, Dh]."""
    if q.shape[1] == 1:
        # One query per row (a decode step): multiply and reduce, which XLA fuses into one pass over the
        # cache; as a dot, the [B, S, K, Dh] cache is first transposed to put K ahead of S (4x slower).
        scores = jnp.sum(q[:, 0, None].astype(jnp.float32) * k[:, :, :, None].astype(jnp.float32), axis=-1)
        scores = scores * (1.0 / math.sqrt(q.shape[-1]))  # [B, S, K, G]
        scores = jnp.where(mask[:, 0, :, None, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=1)
        out = jnp.sum(probs[..., None] * v[:, :, :, None].astype(jnp.float32), axis=1)
        return out[:, None].astype(dt)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores * (1.0 / math.sqrt(q.shape[-1]))
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v)


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        dt = dtype_of(c.dtype)
        init = nn.initializers.normal(0.02)
        wg = _param(self, "w_gate", ("embed", "mlp"), (c.hidden_size, c.intermediate_size), init, c).astype(dt)
        wu = _param(self, "w_up", ("embed", "mlp"), (c.hidden_size, c.intermediate_size), init, c).astype(dt)
        wd = _param(self, "w_down", ("mlp", "embed"), (c.intermediate_size, c.hidden_size), init, c).astype(dt)
        h = jax.nn.silu(project(c, "btd,df->btf", x, wg)) * project(c, "btd,df->btf", x, wu)
        return project(c, "btf,fd->btd", h, wd)


class Block(nn.Module):
    """One pre-norm decoder layer; signature (carry, per-layer cache, broadcasts...) for nn.scan."""

    config: LlamaConfig
    layer: Optional[int] = None  # see Attention.layer

    @nn.compact
    def __call__(self, x, cache, cos, sin, mask, write_pos):
        h = RMSNorm(self.config, name="input_norm")(x)
        a, new_cache = Attention(self.config, layer=self.layer, name="attn")(h, cos, sin, mask, cache, write_pos)
        x = x + a
        x = x + MLP(self.config, name="mlp")(RMSNorm(self.config, name="post_attn_norm")(x))
        return x, new_cache


_REMAT = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Llama(nn.Module):
    """The LLaMA decoder: embedding, layers (looped or scanned), final norm, LM head.

    `mask` [B, T, S]: without a cache it must be causal (`causal_mask`): attention is then computed
    in blocks of `config.attention_query_chunk` queries that read only the keys up to their last slot,
    or by the kernel `config.attention_impl` names (`models.attention`: splash, cudnn)."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, input_ids, positions, mask, cache=None, write_pos=None, return_hidden=False):
        c = self.config
        dt = dtype_of(c.dtype)
        embed = _param(self, "embed", ("vocab", "embed"), (c.vocab_size, c.hidden_size),
                       nn.initializers.normal(0.02), c)
        x = jnp.take(embed, input_ids, axis=0).astype(dt)
        cos, sin = rope_cos_sin(c, positions)
        block = Block
        if c.remat_policy != "none":
            block = nn.remat(Block, policy=_REMAT[c.remat_policy], prevent_cse=not c.scan_layers)
        layer_cache = None if cache is None else (cache["k"], cache["v"])
        if (cache is None and not self.is_initializing()
                and attn_kernels.resolve(c.attention_impl, dtype=c.dtype) != "xla"):
            mask = mask[:, -1, :]  # causal: the last query's row marks the real keys, all a kernel takes
        if c.scan_layers:
            scanned = nn.scan(
                block, variable_axes={"params": 0}, split_rngs={"params": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=c.num_layers, metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, new = scanned(c, name="layers")(x, layer_cache, cos, sin, mask, write_pos)
        elif cache is not None and isinstance(cache["k"], (list, tuple)):  # one array per layer
            ks, vs = [], []
            for i in range(c.num_layers):
                x, (k, v) = block(c, name=f"layers_{i}")(x, (cache["k"][i], cache["v"][i]), cos, sin, mask, write_pos)
                ks.append(k)
                vs.append(v)
            new = (ks, vs)
        else:
            new = layer_cache  # every layer writes its own slots of the stacked cache
            for i in range(c.num_layers):
                x, new = block(c, layer=None if cache is None else i, name=f"layers_{i}")(
                    x, new, cos, sin, mask, write_pos)
        x = RMSNorm(c, name="final_norm")(x)
        new_cache = None if cache is None else {"k": new[0], "v": new[1]}
        if return_hidden:
            return x, new_cache
        if c.tie_word_embeddings:
            logits = project(c, "btd,vd->btv", x, embed.astype(dt))
        else:
            head = _param(self, "lm_head", ("embed", "vocab"), (c.hidden_size, c.vocab_size),
                          nn.initializers.normal(0.02), c)
            logits = project(c, "btd,dv->btv", x, head.astype(dt))
        return logits.astype(jnp.float32), new_cache


# ----------------------------------------------------------------------------- functional API
def _dummy_inputs(batch: int = 1, length: int = 1):
    ids = jnp.zeros((batch, length), jnp.int32)
    pos = jnp.zeros((batch, length), jnp.int32)
    mask = jnp.ones((batch, length, length), bool)
    return ids, pos, mask


def init_boxed(config: LlamaConfig, rng: jax.Array):
    """Initialise parameters with their logical-partitioning boxes (for axis names)."""
    return Llama(config).init(rng, *_dummy_inputs())["params"]


def init_params(config: LlamaConfig, rng: Optional[jax.Array] = None, mesh=None) -> Params:
    """Random parameters (plain arrays); with `mesh`, created directly with their shardings."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    fn = lambda r: nn.meta.unbox(init_boxed(config, r))
    if mesh is None:
        return jax.jit(fn)(rng)
    return jax.jit(fn, out_shardings=param_shardings(config, mesh))(rng)


@functools.lru_cache(maxsize=64)
def param_logical_axes(config: LlamaConfig):
    """Tree (like params) of logical axis-name tuples."""
    boxed = jax.eval_shape(lambda: init_boxed(config, jax.random.PRNGKey(0)))
    return jax.tree.map(lambda b: tuple(b.names), boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def param_shapes(config: LlamaConfig):
    """Tree of jax.ShapeDtypeStruct for the parameters."""
    return jax.eval_shape(lambda: nn.meta.unbox(init_boxed(config, jax.random.PRNGKey(0))))


def param_shardings(config: LlamaConfig, mesh, rules=None):
    """NamedSharding for every parameter from the rules table."""
    from pilotrl_jax import sharding as sh

    return sh.tree_shardings(mesh, param_logical_axes(config), param_shapes(config),
                             rules or sh.DEFAULT_RULES)


def unstack_layers(config: LlamaConfig, params: Params) -> Params:
    """Scanned params (one `layers` tree stacked over layers) as the per-layer `layers_i` trees of
    scan_layers=False (a copy); params already per layer are returned as they are."""
    if "layers" not in params:
        return params
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(config.num_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
    return out


def default_positions(attention_mask: jax.Array) -> jax.Array:
    """Positions counting only real tokens (left padding gets 0), as HF does."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def causal_mask(attention_mask: jax.Array) -> jax.Array:
    """[B, T, T] boolean mask: causal over slots and keys restricted to real tokens."""
    T = attention_mask.shape[-1]
    causal = jnp.arange(T)[None, :] <= jnp.arange(T)[:, None]
    return causal[None] & attention_mask.astype(bool)[:, None, :]


def _prep(input_ids, attention_mask, positions):
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    if positions is None:
        positions = default_positions(attention_mask)
    return input_ids, positions, causal_mask(attention_mask)


def forward(config: LlamaConfig, params: Params, input_ids, attention_mask=None, positions=None) -> jax.Array:
    """float32 logits [B, T, V] for token ids [B, T] (mask 1 = real token, 0 = padding)."""
    ids, pos, mask = _prep(input_ids, attention_mask, positions)
    logits, _ = Llama(config).apply({"params": params}, ids, pos, mask)
    return logits


def forward_hidden(config: LlamaConfig, params: Params, input_ids, attention_mask=None, positions=None) -> jax.Array:
    """Final-norm hidden states [B, T, D] (compute dtype), e.g. for a value head."""
    ids, pos, mask = _prep(input_ids, attention_mask, positions)
    hidden, _ = Llama(config).apply({"params": params}, ids, pos, mask, return_hidden=True)
    return hidden


def init_cache(config: LlamaConfig, batch: int, max_len: int, dtype: Optional[str] = None) -> dict:
    """An empty KV cache {'k','v': [layers, B, max_len, kv_heads, head_dim]}."""
    shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
    dt = dtype_of(dtype or config.dtype)
    return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}


def forward_with_cache(config: LlamaConfig, params: Params, input_ids, positions, cache: dict):
    """Run tokens [B, T] at integer positions [B, T] against a KV cache → (logits [B,T,V], cache).

    Each token's key/value is written at cache slot == its position (writes past the cache end are
    dropped); a query at position p attends to slots 0..p. Padding tokens in a chunk may take any
    position past the row's real tokens: their slots are overwritten by the row's next real tokens.
    The cache is stacked ([layers, B, S, kv, hd] each) or, unscanned, lists of one [B, S, kv, hd] per
    layer (a decode loop carries these: no per-step copy of a layer's slice).
    """
    input_ids = jnp.asarray(input_ids, jnp.int32)
    positions = jnp.asarray(positions, jnp.int32)
    k = cache["k"]
    if isinstance(k, (list, tuple)) and (config.scan_layers or len(k) != config.num_layers):
        raise ValueError(f"a per-layer KV cache needs scan_layers=False and {config.num_layers} arrays; "
                         f"got {len(k)} with scan_layers={config.scan_layers}: pass a stacked cache")
    S = (k[0] if isinstance(k, (list, tuple)) else k).shape[-3]
    mask = jnp.arange(S)[None, None, :] <= positions[:, :, None]
    logits, new_cache = Llama(config).apply({"params": params}, input_ids, positions, mask,
                                            cache=cache, write_pos=positions)
    return logits, new_cache
