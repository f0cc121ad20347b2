"""model.attention_impl: splash (Pallas interpret mode on CPU) and the cuDNN path's row packing give the
xla path's logits and gradients; a backend without a kernel is refused by name."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pilotrl_jax import sharding as sh
from pilotrl_jax.models import attention, llama
from pilotrl_jax.models.config import ATTENTION_IMPLS, ConfigError, LlamaConfig, run_config_overrides

CFG = LlamaConfig.tiny(vocab_size=64, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2,
                       head_dim=16, attention_query_chunk=16)


def _batch(T=40, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, CFG.vocab_size, size=(3, T))
    mask = np.ones_like(ids)
    mask[1, :13] = 0  # left padding
    mask[2, T - 9:] = 0  # right padding
    return np.where(mask == 1, ids, 0), mask


def _loss(cfg, params, ids, mask):
    lp = jax.nn.log_softmax(llama.forward(cfg, params, ids, attention_mask=mask), -1)
    w = (mask[:, :-1] * mask[:, 1:]).astype(np.float32)  # real positions only
    return (jnp.take_along_axis(lp[:, :-1], ids[:, 1:, None], -1)[..., 0] * w).sum() + (lp[:, :-1].max(-1) * w).sum()


def _check_parity(cfg, params, ids, mask, atol=1e-5, jit=False):
    """`jit`: compile each whole forward and gradient, as training does (op by op, every query block's
    ops compile on their own: slower)."""
    real = mask.astype(bool)
    xla_cfg = cfg.replace(attention_impl="xla")
    wrap = jax.jit if jit else (lambda f: f)
    a = np.asarray(wrap(lambda p: llama.forward(xla_cfg, p, ids, attention_mask=mask))(params))
    b = np.asarray(wrap(lambda p: llama.forward(cfg, p, ids, attention_mask=mask))(params))
    assert np.isfinite(b).all()
    np.testing.assert_allclose(b[real], a[real], atol=atol, rtol=0)
    ga = wrap(jax.grad(lambda p: _loss(xla_cfg, p, ids, mask)))(params)
    gb = wrap(jax.grad(lambda p: _loss(cfg, p, ids, mask)))(params)
    worst = max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
                for x, y in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)))
    assert worst <= atol, worst
    return float(np.abs(b[real] - a[real]).max()), worst


@pytest.mark.parametrize("scan", [False, True])
def test_splash_interpret_matches_xla(scan):
    """fp32 logits and gradients within 1e-5, GQA 4/2 heads, left and right padding, T not a multiple of 128."""
    cfg = CFG.replace(attention_impl="splash", scan_layers=scan, remat_policy="full" if scan else "none")
    params = llama.init_params(cfg, jax.random.PRNGKey(1))
    ids, mask = _batch()
    with attention.interpret_splash():
        _check_parity(cfg, params, ids, mask)
        h_xla = llama.forward_hidden(cfg.replace(attention_impl="xla"), params, ids, mask)
        h = llama.forward_hidden(cfg, params, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(h)[real], np.asarray(h_xla)[real], atol=1e-5, rtol=0)


def test_splash_interpret_on_a_mesh_matches_xla():
    """Under jax.set_mesh the kernel runs in shard_map (rows over fsdp, heads over tensor): same numbers."""
    mesh = sh.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, jax.devices()[:4])
    cfg = CFG.replace(attention_impl="splash")
    params = llama.init_params(cfg, jax.random.PRNGKey(2))
    ids, mask = _batch(T=24, seed=1)
    ids, mask = np.concatenate([ids, ids[:1]]), np.concatenate([mask, mask[:1]])  # 4 rows: 2 per fsdp shard
    fwd = jax.jit(lambda p, x, m: llama.forward(cfg, p, x, attention_mask=m))
    with attention.interpret_splash(), jax.set_mesh(mesh):
        got = np.asarray(fwd(params, ids, mask))
        assert "shard_map" in str(jax.make_jaxpr(lambda p: llama.forward(cfg, p, ids, attention_mask=mask))(params))
    want = np.asarray(llama.forward(cfg.replace(attention_impl="xla"), params, ids, attention_mask=mask))
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("pattern", ["left", "right", "holes"])
def test_cudnn_row_packing_matches_xla(pattern):
    """The cuDNN path (real tokens moved to the front, per-row lengths), run through jax.nn's XLA attention."""
    rng = np.random.default_rng(3)
    B, T, K, G, Dh = 3, 20, 2, 2, 8
    q = jnp.asarray(rng.normal(size=(B, T, K, G, Dh)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(B, T, K, Dh)), jnp.float32) for _ in range(2))
    valid = np.ones((B, T), bool)
    if pattern == "left":
        valid[1, :7] = False
    elif pattern == "right":
        valid[2, 12:] = False
    else:
        valid[0, [2, 5, 6, 15]] = False
    want = llama._attend(q, k, v, np.asarray(llama.causal_mask(valid)), jnp.float32)
    got = attention.cudnn(q, k, v, jnp.asarray(valid), jnp.float32, implementation="xla")
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], atol=1e-5, rtol=0)
    g = jax.grad(lambda q, k, v: (attention.cudnn(q, k, v, valid, jnp.float32, "xla") * valid[..., None, None, None]).sum(),
                 argnums=(0, 1, 2))(q, k, v)
    gw = jax.grad(lambda q, k, v: (llama._attend(q, k, v, llama.causal_mask(valid), jnp.float32)
                                   * valid[..., None, None, None]).sum(), argnums=(0, 1, 2))(q, k, v)
    for x, y in zip(g, gw):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5, rtol=0)


def test_default_is_the_xla_path_and_auto_on_cpu_is_xla_flash_bit_for_bit():
    params = llama.init_params(CFG, jax.random.PRNGKey(0))
    ids, mask = _batch()
    assert CFG.attention_impl == "xla"
    forward = lambda impl: np.asarray(llama.forward(CFG.replace(attention_impl=impl), params, ids, attention_mask=mask))
    assert np.array_equal(forward("auto"), forward("xla_flash"))
    assert not np.array_equal(forward("xla"), forward("xla_flash"))  # another path (other rounding)


@pytest.mark.parametrize("scan,chunk", [(False, 16), (True, 0), (False, 7)])
def test_xla_flash_matches_xla(scan, chunk):
    """fp32 logits and gradients within 1e-5 (GQA, left and right padding; blocks of 16, one block, and
    blocks that do not divide T); a left-padding query reads its block's keys uniformly, as in xla."""
    cfg = CFG.replace(attention_impl="xla_flash", attention_query_chunk=chunk, scan_layers=scan,
                      remat_policy="full" if scan else "none")
    params = llama.init_params(cfg, jax.random.PRNGKey(4))
    # chunk 7: 4 blocks of 7, 7, 7 and 3 queries; left padding over blocks 0-1, right padding over 2-3
    ids, mask = _batch(T=24 if chunk == 7 else 40)
    _check_parity(cfg, params, ids, mask, jit=True)
    # every slot, padding queries included, as the xla path computes it
    h = jax.jit(lambda p: llama.forward_hidden(cfg, p, ids, mask))(params)
    h_xla = jax.jit(lambda p: llama.forward_hidden(cfg.replace(attention_impl="xla"), p, ids, mask))(params)
    np.testing.assert_allclose(np.asarray(h), np.asarray(h_xla), atol=1e-5, rtol=0)


def test_xla_flash_in_bfloat16_stays_close_and_keeps_the_input_dtypes():
    from pilotrl_jax.models import flash_xla

    rng = np.random.default_rng(5)
    q = jnp.asarray(rng.normal(size=(2, 24, 2, 2, 8)), jnp.bfloat16)
    k, v = (jnp.asarray(rng.normal(size=(2, 24, 2, 8)), jnp.bfloat16) for _ in range(2))
    valid = jnp.ones((2, 24), bool).at[1, :5].set(False)
    f = lambda q, k, v: flash_xla.attend(q, k, v, valid, 8, jnp.bfloat16).astype(jnp.float32).sum()
    grads = jax.grad(f, argnums=(0, 1, 2))(q, k, v)
    assert [g.dtype for g in grads] == [jnp.bfloat16] * 3
    f32 = lambda q, k, v: flash_xla.attend(q, k, v, valid, 8, jnp.float32).sum()
    want = jax.grad(f32, argnums=(0, 1, 2))(*(x.astype(jnp.float32) for x in (q, k, v)))
    for g, w in zip(grads, want):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w), atol=0.1, rtol=0.05)


def test_backend_without_a_kernel_is_refused_by_name():
    assert attention.resolve("auto", "tpu") == "splash" and attention.resolve("auto", "gpu") == "cudnn"
    assert attention.resolve("auto", "cpu") == "xla_flash" and attention.resolve("xla", "tpu") == "xla"
    assert all(attention.resolve("xla_flash", b) == "xla_flash" for b in ("cpu", "gpu", "tpu"))
    with pytest.raises(attention.AttentionUnavailable, match=r"'cudnn' has no kernel on backend 'cpu', which has \('xla', 'xla_flash'\)"):
        attention.resolve("cudnn", "cpu")
    with pytest.raises(attention.AttentionUnavailable, match=r"'splash' has no kernel on backend 'gpu', which has \('xla', 'xla_flash', 'cudnn'\)"):
        attention.resolve("splash", "gpu")
    with pytest.raises(attention.AttentionUnavailable, match="interpret"):
        attention.resolve("splash", "cpu")
    params = llama.init_params(CFG.replace(attention_impl="cudnn"))  # params do not depend on the kernel
    ids, mask = _batch()
    for impl in ("cudnn", "splash"):
        with pytest.raises(attention.AttentionUnavailable, match=impl):
            llama.forward(CFG.replace(attention_impl=impl), params, ids, attention_mask=mask)
    with attention.compile_for("tpu"):
        assert attention.resolve("auto") == "splash" and attention.resolve("splash") == "splash"


def test_config_field_and_run_config_key():
    from pilotrl_jax.train import config as C

    with pytest.raises(ConfigError, match="attention_impl='flash'"):
        CFG.replace(attention_impl="flash")
    c = C.base_config()
    assert c.model.attention_impl == "xla" and set(ATTENTION_IMPLS) == set(attention.IMPLEMENTATIONS)
    C.check_keys(c)
    c.model.attention_impl = "splash"
    assert run_config_overrides(c.model)["attention_impl"] == "splash"
    assert "attention_impl" in CFG.ours()
