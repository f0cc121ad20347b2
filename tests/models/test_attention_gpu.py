"""On a GPU: the cuDNN flash path and xla_flash give the xla path's logits and gradients.

Skipped without one (CI has none). On a GPU machine:
    JAX_PLATFORMS=cuda python -m pytest tests/models/test_attention_gpu.py
cuDNN's flash attention takes only bf16/fp16, so the cudnn path is held to the xla path's own bf16 error:
both are compared with the xla path in float32, and cudnn may be off by at most 2x what xla-in-bf16 is
(plus 1e-3). An error there (a wrong mask, a row packed the wrong way) is of order 1, not of bf16 rounding.
"""
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pilotrl_jax.models import attention, llama

# the CPU parity tests' model, batch and checks (tests run with --import-mode=importlib: no package)
_spec = importlib.util.spec_from_file_location("_attention_cpu", pathlib.Path(__file__).with_name("test_attention_impl.py"))
_cpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cpu)
CFG, _batch, _check_parity, _loss = _cpu.CFG, _cpu._batch, _cpu._check_parity, _cpu._loss

gpu = pytest.mark.skipif(jax.default_backend() != "gpu",
                         reason="needs a GPU: run with JAX_PLATFORMS=cuda on a machine with one")


def _target_logprob_sum(cfg, params, ids, mask):
    """A smooth loss (the real targets' log-probs): unlike the CPU tests' `_loss`, no max over the
    vocabulary, whose argmax flips under bf16 rounding and makes any two bf16 paths' gradients differ by O(1)."""
    lp = jax.nn.log_softmax(llama.forward(cfg, params, ids, attention_mask=mask), -1)
    w = (mask[:, :-1] * mask[:, 1:]).astype(np.float32)
    return (jnp.take_along_axis(lp[:, :-1], ids[:, 1:, None], -1)[..., 0] * w).sum()


def _logits_and_grads(cfg, params, ids, mask):
    logits = np.asarray(llama.forward(cfg, params, ids, attention_mask=mask), np.float32)
    grads = jax.grad(lambda p: _target_logprob_sum(cfg, p, ids, mask))(params)
    return logits, [np.asarray(g, np.float32) for g in jax.tree_util.tree_leaves(grads)]


def _rel(x, ref):
    return float(np.linalg.norm(x - ref) / max(float(np.linalg.norm(ref)), 1e-12))


@gpu
@pytest.mark.parametrize("T,scan", [(40, False), (128, True)])
def test_cudnn_in_bf16_is_as_close_to_fp32_as_xla_in_bf16(T, scan):
    """GQA 4/2 heads, left and right padding; T=40 (no multiple of any tile) unscanned, T=128 scanned + remat.

    Logits: max error on real positions at most 3x xla-in-bf16's (+1e-3). Gradients, per parameter: relative
    error (Frobenius) at most max(3x xla-in-bf16's, 0.05). On CPU, xla in bf16 is off by 0.5-1.7% per
    parameter, while a path that reads the padding keys is off by 40-90%."""
    base = CFG.replace(scan_layers=scan, remat_policy="full" if scan else "none")
    params = llama.init_params(base, jax.random.PRNGKey(7))
    ids, mask = _batch(T=T)
    real = mask.astype(bool)
    ref_l, ref_g = _logits_and_grads(base.replace(attention_impl="xla"), params, ids, mask)
    bf = base.replace(dtype="bfloat16")
    xla_l, xla_g = _logits_and_grads(bf.replace(attention_impl="xla"), params, ids, mask)
    cud_l, cud_g = _logits_and_grads(bf.replace(attention_impl="cudnn"), params, ids, mask)
    assert np.isfinite(cud_l).all()
    err_xla = np.abs(xla_l - ref_l)[real].max()
    err_cud = np.abs(cud_l - ref_l)[real].max()
    assert err_cud <= 3 * err_xla + 1e-3, (err_cud, err_xla)
    for i, (r, x, c) in enumerate(zip(ref_g, xla_g, cud_g)):
        assert _rel(c, r) <= max(3 * _rel(x, r), 0.05), (i, _rel(c, r), _rel(x, r))


@gpu
def test_xla_flash_on_gpu_matches_xla_in_fp32():
    """The flash-style custom_vjp compiles and keeps the xla path's numbers on GPU (fp32, highest precision)."""
    cfg = CFG.replace(attention_impl="xla_flash", attention_query_chunk=16)
    params = llama.init_params(cfg, jax.random.PRNGKey(4))
    ids, mask = _batch()
    _check_parity(cfg, params, ids, mask)


@gpu
def test_auto_on_gpu_is_cudnn_in_bfloat16():
    assert attention.resolve("auto", dtype="bfloat16") == "cudnn"
    params = llama.init_params(CFG, jax.random.PRNGKey(0))
    ids, mask = _batch()
    bf = CFG.replace(dtype="bfloat16")
    a = llama.forward(bf.replace(attention_impl="auto"), params, ids, attention_mask=mask)
    b = llama.forward(bf.replace(attention_impl="cudnn"), params, ids, attention_mask=mask)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_cudnn_takes_half_precision_only_and_auto_picks_xla_flash_for_float32():
    """cuDNN flash attention has no float32 kernel: `cudnn` with model.dtype=float32 is refused by name (with
    the fix); `auto` on GPU is cudnn in bf16/fp16 and xla_flash in float32. Runs anywhere (no GPU needed)."""
    assert attention.resolve("auto", "gpu", dtype="bfloat16") == "cudnn"
    assert attention.resolve("auto", "gpu", dtype="float16") == "cudnn"
    assert attention.resolve("auto", "gpu", dtype="float32") == "xla_flash"
    assert attention.resolve("cudnn", "gpu", dtype="bfloat16") == "cudnn"
    with pytest.raises(attention.AttentionUnavailable,
                       match=r"attention_impl='cudnn' with model.dtype='float32'.*set model.dtype='bfloat16'"):
        attention.resolve("cudnn", "gpu", dtype="float32")
    with attention.compile_for("gpu"), pytest.raises(attention.AttentionUnavailable, match="model.dtype='float32'"):
        llama.forward(CFG.replace(attention_impl="cudnn"), llama.init_params(CFG), *_batch()[:1],
                      attention_mask=_batch()[1])
