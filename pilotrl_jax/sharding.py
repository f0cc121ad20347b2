"""The one place for sharding: the device mesh and the logical-axis → mesh-axis rules table."""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axis (or tuple of mesh axes, or None = replicated).
# Parameters: weights are sharded over `fsdp` on their embed dim and over `tensor` on heads/mlp/vocab.
# Activations: batch over (data, fsdp).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("cache_length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    ("act_embed", None),
)


def mesh_sizes(shape: Optional[dict], n: int) -> list[int]:
    """[data, fsdp, tensor] sizes for `n` devices from `shape` (-1 = 'the rest'; default: all on fsdp)."""
    shape = dict(shape or {"data": 1, "fsdp": -1, "tensor": 1})
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh shape has axes {sorted(unknown)}; expected a subset of {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh shape {shape} has more than one -1; at most one axis can take 'the rest'")
    bad = [f"{a}={s}" for a, s in zip(MESH_AXES, sizes) if s == 0 or s < -1]
    if bad:
        raise ValueError(f"mesh shape {shape} has {', '.join(bad)}; each size must be a positive int or -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n % known:
            raise ValueError(f"mesh shape {shape} does not divide {n} devices")
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n:
        raise ValueError(f"mesh shape {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {n}")
    return sizes


def num_slices(devices: Sequence[Any]) -> int:
    """How many TPU slices (multislice, joined over DCN) the devices come from (1 without slice_index)."""
    return len({getattr(d, "slice_index", 0) or 0 for d in devices}) or 1


def dcn_sizes(sizes: Sequence[int], slices: int) -> list[int]:
    """The part of [data, fsdp, tensor] that spans slices: `slices` on data if it divides, else on fsdp."""
    for i, axis in enumerate(MESH_AXES[:2]):
        if sizes[i] % slices == 0:
            out = [1] * len(MESH_AXES)
            out[i] = slices
            return out
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} spans {slices} slices: config.mesh.data (or fsdp) must "
                     f"be a multiple of {slices}, e.g. mesh.data={slices}, so that only data/fsdp traffic crosses "
                     "the data-center network")


def device_grid(sizes: Sequence[int], devices: Sequence[Any]) -> np.ndarray:
    """Devices laid out as a [data, fsdp, tensor] array.

    TPU: `mesh_utils.create_device_mesh` (neighbours on the torus share the inner axes), or
    `create_hybrid_device_mesh` when the devices come from several slices (the slice axis goes on
    data, else fsdp). Other platforms (CPU tests, GPU): `devices` in their order, reshaped."""
    devices = list(devices)
    sizes = [int(s) for s in sizes]
    if len(devices) == 1 or not all(getattr(d, "platform", "") == "tpu" for d in devices):
        return np.asarray(devices, dtype=object).reshape(sizes)
    from jax.experimental import mesh_utils

    slices = num_slices(devices)
    if slices > 1:
        dcn = dcn_sizes(sizes, slices)
        ici = [s // d for s, d in zip(sizes, dcn)]
        try:
            return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=True)
        except (ValueError, NotImplementedError, AssertionError) as e:
            raise ValueError(f"cannot lay out mesh {dict(zip(MESH_AXES, sizes))} over {slices} slices of "
                             f"{len(devices) // slices} chips ({e}); pick per-slice sizes that match the slice") from None
    for split in (False, True):
        try:
            return mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=split)
        except (ValueError, NotImplementedError, AssertionError):
            continue
    # an irregular device set (e.g. part of a slice): plain order, still correct, maybe slower collectives
    return np.asarray(devices, dtype=object).reshape(sizes)


def make_mesh(shape: Optional[dict] = None, devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; sizes from `shape` with -1 for 'the rest' (default: all on fsdp).

    On TPU the device order is topology-aware (`device_grid`); on CPU it is `devices` reshaped."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = mesh_sizes(shape, len(devices))
    arr = device_grid(sizes, devices)
    return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(logical_axes: Sequence[Optional[str]], shape: Optional[Sequence[int]] = None,
                    mesh: Optional[Mesh] = None, rules=DEFAULT_RULES) -> P:
    """PartitionSpec for an array with the given logical axis names.

    With `shape` and `mesh`, a mesh axis that does not divide the dimension (or is already used by an
    earlier dimension) is dropped for that dimension, so odd sizes stay correct (replicated there).
    """
    table = dict(rules)
    used: set[str] = set()
    out = []
    for i, name in enumerate(logical_axes):
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no sharding rule; add it to DEFAULT_RULES in sharding.py")
        target = table[name]
        axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        kept = []
        for ax in axes:
            if ax in used:
                continue
            if mesh is not None:
                size = mesh.shape[ax]
                dim = shape[i] if shape is not None else None
                cur = math.prod(mesh.shape[a] for a in kept)
                if dim is not None and dim % (cur * size):
                    continue
            kept.append(ax)
        used.update(kept)
        out.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
    return P(*out)


def named_sharding(mesh: Mesh, logical_axes, shape=None, rules=DEFAULT_RULES) -> NamedSharding:
    """NamedSharding for one array from its logical axes."""
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh, rules))


def tree_shardings(mesh: Mesh, logical_tree, shape_tree, rules=DEFAULT_RULES):
    """Map a tree of logical-axis tuples (and a matching tree of shapes/arrays) to NamedShardings."""
    is_axes = lambda x: isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)
    return jax.tree.map(
        lambda axes, s: named_sharding(mesh, axes, getattr(s, "shape", s), rules),
        logical_tree, shape_tree, is_leaf=is_axes,
    )


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding on `mesh`."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int, batch_size: Optional[int] = None) -> NamedSharding:
    """Shard the leading (batch) dimension over (data, fsdp); other dims replicated."""
    axes = ("batch",) + (None,) * (ndim - 1)
    shape = None if batch_size is None else (batch_size,) + (1,) * (ndim - 1)
    return named_sharding(mesh, axes, shape)
