"""The model's projection matmuls (q/k/v/o, the MLP, the LM head), with a weight gradient laid out for CPU.

`project(c, spec, x, w)` is `jnp.einsum(spec, x, w)` for an activation `x` and a weight `w`. Under autodiff,
JAX computes the weight gradient as a product of the output gradient with `x` followed by a transpose.
XLA on CPU then writes the output gradient (e.g. the MLP's [16384, 384] gate gradient) transposed into a
new buffer before the product, through a slow strided copy. On CPU this function instead has a
`jax.custom_vjp` that computes the weight gradient as one [rows, in] x [rows, out] product with `x` first,
and XLA then makes no copy (a 3-D einsum over (b, t) with `x` first still had it transpose `x`). At the
demo's 16 x 1024 tokens that cut the MLP's forward and backward from 148 to 100 ms.

The custom VJP is used only when compiling for CPU with `model.remat_policy` "none" or "full". The
"dots" policies save matmul outputs by finding `dot_general` in the forward pass, and the custom VJP
hides it from them, so they keep JAX's own VJP. So do GPU and TPU, whose layouts were measured with JAX's.
The maths is the same; float rounding of the weight gradient may differ (within 1e-5 in fp32 in the tests).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from pilotrl_jax.models import attention


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def einsum_x_first(spec: str, x, w):
    """`jnp.einsum(spec, x, w)` whose VJP computes dw as einsum(x, g) and dx as einsum(g, w)."""
    return jnp.einsum(spec, x, w)


def _fwd(spec, x, w):
    return jnp.einsum(spec, x, w), (x, w)


def _bwd(spec, res, g):
    x, w = res
    ins, out = spec.split("->")
    xs, ws = ins.split(",")
    batch = "".join(d for d in xs if d not in ws)  # the row dims (b, t)
    contract, free = xs[len(batch):], "".join(d for d in ws if d not in xs)
    if not (xs.startswith(batch) and out == batch + free):
        raise ValueError(f"einsum_x_first({spec!r}): expected x = rows + contracted dims and output = rows + "
                         f"w's free dims (as 'btd,df->btf'); use jnp.einsum for other specs")
    dx = jnp.einsum(f"{out},{ws}->{xs}", g, w)
    # one [rows, in] x [rows, out] product: XLA on CPU reads both as they lie
    m = math.prod(x.shape[:len(batch)])
    dw = jnp.einsum("mc,mn->cn", x.reshape(m, -1), g.reshape(m, -1))
    dw = dw.reshape([w.shape[ws.index(d)] for d in contract + free])
    dw = jnp.einsum(f"{contract + free}->{ws}", dw)  # a transpose only when w lies free-first (vd)
    return dx.astype(x.dtype), dw.astype(w.dtype)


einsum_x_first.defvjp(_fwd, _bwd)


def custom_vjp_applies(remat_policy: str) -> bool:
    """Whether `project` uses the x-first weight gradient: compiling for CPU, remat policy none or full."""
    return attention.backend() == "cpu" and remat_policy in ("none", "full")


def project(c, spec: str, x, w):
    """`jnp.einsum(spec, x, w)`, activation `x`, weight `w`; on CPU with its x-first weight gradient (above)."""
    if custom_vjp_applies(c.remat_policy):
        return einsum_x_first(spec, x, w)
    return jnp.einsum(spec, x, w)
