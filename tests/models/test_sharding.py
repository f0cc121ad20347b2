"""The same model on 1 device and on a 2x4 fake-device mesh, placed by the rules table."""
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding

from pilotrl_jax import sharding as sh
from pilotrl_jax.models import hf_io, llama
from pilotrl_jax.models.config import LlamaConfig


def test_make_mesh_shapes_and_errors():
    assert len(jax.devices()) == 8
    m = sh.make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
    assert dict(m.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="needs 16 devices"):
        sh.make_mesh({"data": 4, "fsdp": 4, "tensor": 1})
    with pytest.raises(ValueError, match="expected a subset"):
        sh.make_mesh({"model": 8})


def test_rules_drop_axes_that_do_not_divide():
    m = sh.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    assert sh.logical_to_spec(("embed", "heads", "head_dim"), (64, 4, 16), m) == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    assert sh.logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 2, 16), m) == jax.sharding.PartitionSpec("fsdp", None, None)
    with pytest.raises(KeyError, match="no sharding rule"):
        sh.logical_to_spec(("bogus",))


@pytest.mark.parametrize("scan", [False, True])
def test_forward_on_2x4_mesh_matches_one_device(hf_factory, scan):
    _, path = hf_factory(num_attention_heads=4, num_key_value_heads=4, hidden_size=64, head_dim=16,
                         intermediate_size=96, vocab_size=128)
    ids = np.random.default_rng(0).integers(3, 128, size=(8, 24))
    config, params = hf_io.load_hf(path, scan_layers=scan)
    ref = np.asarray(jax.jit(lambda p, x: llama.forward(config, p, x))(params, ids))
    mesh = sh.make_mesh({"data": 2, "fsdp": 1, "tensor": 4})
    config_m, params_m = hf_io.load_hf(path, mesh=mesh, scan_layers=scan)
    wq = params_m["layers"]["attn"]["wq"] if scan else params_m["layers_0"]["attn"]["wq"]
    assert isinstance(wq.sharding, NamedSharding) and "tensor" in str(wq.sharding.spec)
    assert len(wq.sharding.device_set) == 8
    shardings = llama.param_shardings(config_m, mesh)
    fwd = jax.jit(lambda p, x: llama.forward(config_m, p, x),
                  in_shardings=(shardings, sh.batch_sharding(mesh, 2, 8)))
    out = fwd(params_m, jax.device_put(ids, sh.batch_sharding(mesh, 2, 8)))
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)
    # exporting sharded params gathers them piece by piece to the same tensors
    back = hf_io.iter_hf_tensors(config_m, params_m)
    orig = dict(hf_io.iter_hf_tensors(config, params))
    for name, arr in back:
        np.testing.assert_array_equal(arr, orig[name])


def test_init_params_on_mesh_uses_rule_shardings():
    c = LlamaConfig.tiny(num_heads=4, num_kv_heads=4)
    mesh = sh.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    p = llama.init_params(c, mesh=mesh)
    assert p["embed"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert p["layers_1"]["mlp"]["w_down"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
