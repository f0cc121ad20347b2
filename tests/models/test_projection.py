"""projection.project: the x-first weight gradient gives JAX's own numbers, is used only where it should be,
and spares XLA on CPU the transposed copy of the output gradient."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pilotrl_jax.models import attention, llama, projection
from pilotrl_jax.models.config import LlamaConfig

SPECS = {  # the model's projections: (spec, x shape, w shape)
    "q/k/v": ("btd,dhk->bthk", (2, 5, 8), (8, 3, 4)),
    "o": ("bthk,hkd->btd", (2, 5, 3, 4), (3, 4, 8)),
    "mlp": ("btd,df->btf", (2, 5, 8), (8, 12)),
    "tied head": ("btd,vd->btv", (2, 5, 8), (16, 8)),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_values_and_gradients_equal_jax_einsum(name):
    spec, xs, ws = SPECS[name]
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x, w = jax.random.normal(kx, xs), jax.random.normal(kw, ws)
    y_ref, vjp_ref = jax.vjp(lambda x, w: jnp.einsum(spec, x, w), x, w)
    y, vjp = jax.vjp(lambda x, w: projection.einsum_x_first(spec, x, w), x, w)
    g = jax.random.normal(kg, y.shape)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    for a, b in zip(vjp(g), vjp_ref(g)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_a_spec_whose_output_is_not_rows_then_weight_dims_is_refused_by_name():
    x, w = jnp.ones((2, 3, 4)), jnp.ones((4, 5))
    with pytest.raises(ValueError, match=r"einsum_x_first\('btd,df->bft'\).*use jnp.einsum"):
        jax.grad(lambda w: projection.einsum_x_first("btd,df->bft", x, w).sum())(w)


def test_used_on_cpu_only_and_not_under_the_dots_remat_policies():
    """The "dots" policies find dot_general in the forward pass, which the custom VJP hides from them."""
    assert projection.custom_vjp_applies("none") and projection.custom_vjp_applies("full")
    assert not projection.custom_vjp_applies("dots") and not projection.custom_vjp_applies("dots_no_batch")
    with attention.compile_for("tpu"):
        assert not projection.custom_vjp_applies("none")
    with attention.compile_for("gpu"):
        assert not projection.custom_vjp_applies("full")
    c = LlamaConfig.tiny(remat_policy="dots")
    x, w = jnp.ones((1, 2, 3)), jnp.ones((3, 4))
    assert "custom_vjp" not in str(jax.make_jaxpr(lambda x, w: projection.project(c, "btd,df->btf", x, w))(x, w))
    c = LlamaConfig.tiny(remat_policy="none")
    assert "custom_vjp" in str(jax.make_jaxpr(lambda x, w: projection.project(c, "btd,df->btf", x, w))(x, w))


def _transposed_copies(hlo: str, a: int, b: int) -> list[str]:
    """HLO lines that write an [a, b] f32 array by a copy or transpose (the output gradient laid out anew)."""
    pattern = rf"= f32\[{a},{b}\]\{{1,0\}} (copy|transpose|fusion)\("
    return [ln for ln in hlo.splitlines() if re.search(pattern, ln) and ("copy" in ln or "transpose" in ln)]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA on CPU's layouts")
def test_mlp_backward_on_cpu_makes_no_transposed_copy_of_the_gate_gradient():
    """JAX's own VJP has XLA on CPU write the [F, B*T] transpose of the gate/up gradients; the x-first one not."""
    T, D, F = 16384, 128, 384  # the demo model at 16 x 1024 tokens (compiled only, not run)
    x = jax.ShapeDtypeStruct((16, T // 16, D), jnp.float32)
    ws = [jax.ShapeDtypeStruct(s, jnp.float32) for s in [(D, F), (D, F), (F, D)]]

    def hlo(mm):
        def loss(ws, x):
            h = jax.nn.silu(mm("btd,df->btf", x, ws[0])) * mm("btd,df->btf", x, ws[1])
            return (mm("btf,fd->btd", h, ws[2]) ** 2).sum()
        return jax.jit(jax.grad(loss)).lower(ws, x).compile().as_text()

    assert _transposed_copies(hlo(jnp.einsum), F, T), "JAX's VJP no longer makes the copy: this module may go"
    assert not _transposed_copies(hlo(projection.einsum_x_first), F, T)


def test_model_gradients_equal_with_and_without_the_custom_vjp():
    """The whole model (GQA, tied head): remat none uses the custom VJP, 'dots' JAX's; same grads in fp32."""
    c = LlamaConfig.tiny(tie_word_embeddings=True)
    params = llama.init_params(c, jax.random.PRNGKey(3))
    ids = jax.random.randint(jax.random.PRNGKey(4), (2, 12), 3, c.vocab_size)

    def grads(cfg):
        return jax.jit(jax.grad(lambda p: jax.nn.log_softmax(llama.forward(cfg, p, ids)).max(-1).sum()))(params)

    for a, b in zip(jax.tree.leaves(grads(c)), jax.tree.leaves(grads(c.replace(remat_policy="dots")))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
