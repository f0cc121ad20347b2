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


# ----------------------------------------------------------------------------- device order


def test_cpu_mesh_is_the_device_list_reshaped():
    devs = jax.devices()
    for shape, sizes in (({"data": 2, "fsdp": -1, "tensor": 2}, (2, 2, 2)), ({"fsdp": -1}, (1, 8, 1)),
                         ({"data": 1, "fsdp": 1, "tensor": -1}, (1, 1, 8)), (None, (1, 8, 1))):
        m = sh.make_mesh(shape)
        assert m.axis_names == sh.MESH_AXES
        np.testing.assert_array_equal(m.devices, np.asarray(devs, dtype=object).reshape(sizes))
    rev = list(reversed(devs))  # an explicit device list keeps its order
    np.testing.assert_array_equal(sh.make_mesh({"fsdp": -1}, rev).devices.reshape(-1), np.asarray(rev, dtype=object))


def test_mesh_shape_errors_name_the_input():
    with pytest.raises(ValueError, match="more than one -1"):
        sh.make_mesh({"data": -1, "fsdp": -1})
    with pytest.raises(ValueError, match="tensor=0"):
        sh.make_mesh({"fsdp": -1, "tensor": 0})
    with pytest.raises(ValueError, match="does not divide 8 devices"):
        sh.make_mesh({"fsdp": -1, "tensor": 3})


class _FakeTPU:
    """Just enough of a TPU device for mesh_utils: id, coords, slice, host, kind."""

    platform, device_kind, core_on_chip = "tpu", "TPU v5 lite", 0

    def __init__(self, id, coords, slice_index):
        self.id, self.coords, self.slice_index, self.process_index = id, coords, slice_index, slice_index

    def __repr__(self):
        return f"FakeTPU({self.id})"


def test_multislice_mesh_puts_slices_on_data_or_fsdp():
    devs = [_FakeTPU(s * 4 + i, (i % 2, i // 2, 0), s) for s in range(2) for i in range(4)]  # 2 slices of v5e 2x2
    slice_of = np.vectorize(lambda d: d.slice_index)
    grid = sh.device_grid(sh.mesh_sizes({"data": 2, "fsdp": -1, "tensor": 2}, 8), devs)
    assert slice_of(grid)[0].tolist() == [[0, 0], [0, 0]] and slice_of(grid)[1].tolist() == [[1, 1], [1, 1]]
    grid = sh.device_grid(sh.mesh_sizes({"data": 1, "fsdp": -1, "tensor": 2}, 8), devs)
    assert slice_of(grid)[0, :, 0].tolist() == [0, 0, 1, 1]  # no data axis: the slices split fsdp
    assert sh.num_slices(devs) == 2 and sh.num_slices(jax.devices()) == 1
    with pytest.raises(ValueError, match="mesh.data=2"):
        sh.device_grid(sh.mesh_sizes({"data": 1, "fsdp": 1, "tensor": -1}, 8), devs)


@pytest.mark.skipif(__import__("importlib").util.find_spec("libtpu") is None, reason="libtpu not installed")
def test_tpu_topology_mesh_is_topology_aware():
    """On TPU devices (an AOT topology, no chips needed) the order comes from mesh_utils, not jax.devices()."""
    import os

    from jax.experimental import mesh_utils, topologies

    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    devs = list(topologies.get_topology_desc(platform="tpu", topology_name="v5p:2x2x4").devices)
    m = sh.make_mesh({"data": 1, "fsdp": -1, "tensor": 4}, devs)
    assert dict(m.shape) == {"data": 1, "fsdp": 4, "tensor": 4}
    np.testing.assert_array_equal(m.devices, mesh_utils.create_device_mesh((1, 4, 4), devs))
    assert sorted(d.id for d in m.devices.flat) == sorted(d.id for d in devs)
    assert [d.id for d in m.devices.flat] != [d.id for d in devs]  # really reordered for the torus
