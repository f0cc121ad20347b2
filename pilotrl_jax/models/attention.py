"""Causal self-attention kernels without a KV cache (training, scoring): `model.attention_impl`.

- `xla`: the model's own blocked einsum path (`llama.Attention`; nothing here). The default.
- `xla_flash`: blocked XLA attention with heads ahead of the sequence and a flash-style backward
  (`models.flash_xla`: saves the output and per-query softmax statistics, recomputes probabilities):
  every backend has it; on CPU it is the fastest training path (benchmarks/bench_ppo_step.py). Same
  maths as `xla`, other float rounding (~1e-6 in fp32), so `xla` stays the default.
- `splash`: the Pallas TPU splash-attention kernel (`jax.experimental.pallas.ops.tpu.splash_attention`):
  a static causal mask and padding as segment ids (real tokens 1, padding 0), so a real query reads
  exactly the real keys at or before it, and a padding query reads only padding (itself at least: no
  empty softmax row). Grouped-query heads go to the kernel as they are (it maps query head h to kv
  head h // (H / K)). The kernel's tiles are 128 lanes wide, so the wrapper pads head_dim and the
  sequence with zeros up to multiples of 128 (padded slots are padding) and slices the output back;
  block sizes are the largest of 512/256/128 that divide the padded length. Under a mesh context
  (`jax.set_mesh`) it runs in `shard_map`, rows over (data, fsdp) and heads over tensor as the rules
  table shards them; without one it runs as one call (replicated by XLA on a multi-chip mesh).
  Off TPU it runs only in Pallas interpret mode (`interpret_splash()`, for tests).
- `cudnn`: `jax.nn.dot_product_attention(..., implementation="cudnn")` (cuDNN flash attention). cuDNN
  takes padding only as per-row lengths, so each row's real tokens are first moved to its front
  (a stable sort: their order, hence the causal mask among them, is kept) and moved back after.
- `auto`: by backend: tpu -> splash, gpu -> cudnn (xla_flash when model.dtype is float32: cuDNN's flash
  attention takes only bf16/fp16, and `cudnn` with float32 is refused by name), anything else (cpu) -> xla_flash.

A backend without the requested kernel raises `AttentionUnavailable` naming the ones it has: never a
silent fallback that would change the numerics.
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from pilotrl_jax.models import flash_xla

IMPLEMENTATIONS = ("xla", "xla_flash", "splash", "cudnn", "auto")
_AUTO = {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn"}
_AUTO_OTHER = "xla_flash"
_CUDNN_DTYPES = ("bfloat16", "float16")
_LANES = 128
_STATE = {"backend": None, "interpret": False}


class AttentionUnavailable(ValueError):
    """An attention implementation that the backend has no kernel for."""


def available(backend: str) -> tuple[str, ...]:
    """The attention implementations a backend has kernels for."""
    return {"tpu": ("xla", "xla_flash", "splash"), "gpu": ("xla", "xla_flash", "cudnn"),
            "cuda": ("xla", "xla_flash", "cudnn")}.get(backend, ("xla", "xla_flash"))


@contextlib.contextmanager
def compile_for(backend: Optional[str]):
    """Resolve implementations for `backend` (e.g. 'tpu' while AOT-compiling for a TPU topology on a CPU host)."""
    old = _STATE["backend"]
    _STATE["backend"] = backend
    try:
        yield
    finally:
        _STATE["backend"] = old


@contextlib.contextmanager
def interpret_splash():
    """Let `splash` run off TPU in Pallas interpret mode (slow; for parity tests on CPU).

    Functions jitted inside keep the interpreted kernel in their compile cache."""
    old = _STATE["interpret"]
    _STATE["interpret"] = True
    try:
        yield
    finally:
        _STATE["interpret"] = old


def backend() -> str:
    """The backend implementations are resolved for: `compile_for`'s, else JAX's default."""
    return _STATE["backend"] or jax.default_backend()


def resolve(impl: str, on: Optional[str] = None, dtype: Optional[str] = None) -> str:
    """The kernel `impl` runs on backend `on` (default `backend()`) for compute `dtype` (model.dtype; None =
    not checked): xla, xla_flash, splash or cudnn; raise if it has none. cuDNN flash attention takes only
    bf16/fp16, so `auto` on GPU is cudnn in bfloat16 and xla_flash in float32, and `cudnn` in float32 is refused."""
    if impl not in IMPLEMENTATIONS:
        raise AttentionUnavailable(f"attention_impl={impl!r}; expected one of {IMPLEMENTATIONS}")
    on = on or backend()
    half = dtype is None or dtype in _CUDNN_DTYPES
    if impl == "auto":
        pick = _AUTO.get(on, _AUTO_OTHER)
        return pick if pick != "cudnn" or half else _AUTO_OTHER
    if impl == "cudnn" and not half:
        raise AttentionUnavailable(
            f"model.attention_impl='cudnn' with model.dtype={dtype!r}: cuDNN flash attention takes only "
            f"{_CUDNN_DTYPES}; set model.dtype='bfloat16', or model.attention_impl='xla_flash' (or 'auto') for {dtype}")
    have = available(on)
    if impl in have or (impl == "splash" and _STATE["interpret"]):
        return impl
    hint = (" (splash runs off TPU only in Pallas interpret mode, for tests: "
            "pilotrl_jax.models.attention.interpret_splash())" if impl == "splash" else "")
    raise AttentionUnavailable(
        f"model.attention_impl={impl!r} has no kernel on backend {on!r}, which has {have}; set "
        f"model.attention_impl to one of them, or 'auto' (= {_AUTO.get(on, _AUTO_OTHER)!r} here){hint}")


def mesh_context(impl: str, mesh, dtype: Optional[str] = None):
    """A factory of the context to trace a model function in on `mesh`: `jax.set_mesh(mesh)` when `impl`
    resolves to splash on a mesh of more than one device (so the kernel runs in shard_map over rows and
    heads), else a no-op (the other paths take their shardings from the arguments)."""

    def enter():
        if mesh is None or mesh.size == 1 or resolve(impl, mesh.devices.flat[0].platform, dtype) != "splash":
            return contextlib.nullcontext()
        return jax.set_mesh(mesh)

    return enter


def attend(impl: str, q, k, v, key_valid, dt, chunk: int = 128):
    """Causal self-attention with a resolved kernel: q [B, T, K, G, Dh], k/v [B, T, K, Dh], key_valid [B, T]
    (True = real token) -> [B, T, K, G, Dh] in `dt`; scale 1/sqrt(Dh); `chunk`: xla_flash's query block."""
    if impl == "xla_flash":
        return flash_xla.attend(q, k, v, key_valid.astype(bool), int(chunk), dt)
    if impl == "splash":
        return splash(q, k, v, key_valid, dt)
    if impl == "cudnn":
        return cudnn(q, k, v, key_valid, dt)
    raise AttentionUnavailable(f"attend() takes a kernel ('xla_flash', 'splash' or 'cudnn'); got {impl!r}")


# ----------------------------------------------------------------------------- splash (TPU / interpret)
def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def block_size(length: int) -> int:
    """Splash tile length for a padded sequence: the largest of 512, 256, 128 that divides it."""
    return next(b for b in (512, 256, _LANES) if length % b == 0)


def _splash_kernel(heads: int, length: int, interpret: bool):
    # built in each trace (its mask tables are staged into it as constants); the costly numpy mask
    # processing is cached by the kernel library itself
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    b = block_size(length)
    sizes = sa.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                          block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    mask = sa.MultiHeadMask([sa.CausalMask((length, length)) for _ in range(heads)])
    return sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _mesh_specs(mesh, rows: int, kv_heads: int):
    """(row axes, head axis) of a splash call under `mesh`: the rules table's batch and heads axes that divide."""
    from pilotrl_jax import sharding as sh

    table = dict(sh.DEFAULT_RULES)
    axes = table["batch"]
    row_axes, n = [], 1
    for a in ((axes,) if isinstance(axes, str) else tuple(axes or ())):
        if a in mesh.axis_names and rows % (n * mesh.shape[a]) == 0:
            row_axes.append(a)
            n *= mesh.shape[a]
    head = table["kv_heads"]
    head = head if head in mesh.axis_names and kv_heads % mesh.shape[head] == 0 else None
    return (tuple(row_axes) or None), head


def splash(q, k, v, key_valid, dt):
    """Splash attention (see the module doc): q [B, T, K, G, Dh], k/v [B, T, K, Dh], key_valid [B, T] -> like q."""
    B, T, K, G, Dh = q.shape
    H = K * G
    Tp, Dp = _round_up(T, _LANES), _round_up(Dh, _LANES)
    scale = 1.0 / math.sqrt(Dh)
    qh = (q.astype(jnp.float32) * scale).astype(dt).reshape(B, T, H, Dh).transpose(0, 2, 1, 3)
    kh, vh = k.astype(dt).transpose(0, 2, 1, 3), v.astype(dt).transpose(0, 2, 1, 3)
    pad = ((0, 0), (0, 0), (0, Tp - T), (0, Dp - Dh))
    qh, kh, vh = (jnp.pad(x, pad) for x in (qh, kh, vh))
    seg = jnp.pad(key_valid.astype(jnp.int32), ((0, 0), (0, Tp - T)))
    interpret = backend() != "tpu"

    def run(qh, kh, vh, seg):
        from jax.experimental.pallas.ops.tpu import splash_attention as sa

        kernel = _splash_kernel(qh.shape[1], Tp, interpret)
        one = lambda q1, k1, v1, s1: kernel(q1, k1, v1, segment_ids=sa.SegmentIds(s1, s1))
        return jax.vmap(one)(qh, kh, vh, seg)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or math.prod(mesh.shape.values()) == 1:
        out = run(qh, kh, vh, seg)
    else:
        rows, head = _mesh_specs(mesh, B, K)
        spec = P(rows, head, None, None)
        out = jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec, P(rows, None)), out_specs=spec,
                            check_vma=False)(qh, kh, vh, seg)
    out = out[:, :, :T, :Dh].transpose(0, 2, 1, 3)
    return out.reshape(B, T, K, G, Dh).astype(dt)


# ----------------------------------------------------------------------------- cuDNN (GPU)
def cudnn(q, k, v, key_valid, dt, implementation: str = "cudnn"):
    """cuDNN flash attention (see the module doc); `implementation='xla'` runs the same path through
    jax.nn's XLA attention (to test the row packing off GPU)."""
    B, T, K, G, Dh = q.shape
    valid = key_valid.astype(bool)
    # stable: real tokens first, in order (causal order among them kept), then padding
    order = jnp.argsort(jnp.logical_not(valid).astype(jnp.int32), axis=1, stable=True)
    inverse = jnp.argsort(order, axis=1)
    lengths = jnp.sum(valid, axis=1, dtype=jnp.int32)
    take = lambda x, idx: jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)
    qs = take(q.reshape(B, T, K * G, Dh).astype(dt), order)
    out = jax.nn.dot_product_attention(
        qs, take(k.astype(dt), order), take(v.astype(dt), order), is_causal=True, query_seq_lengths=lengths,
        key_value_seq_lengths=lengths, implementation=implementation)
    out = take(out, inverse)
    out = jnp.where(valid[:, :, None, None], out, jnp.zeros((), out.dtype))  # padding queries: 0
    return out.reshape(B, T, K, G, Dh).astype(dt)
