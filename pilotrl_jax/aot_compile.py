"""The compile half of `python -m pilotrl_jax.aot`: TPU topologies and meshes, abstract (sharded,
weightless) inputs, and the trainer's functions compiled for a topology with their memory and FLOPs."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time

from pilotrl_jax.buckets import bucket_length
from pilotrl_jax.train.memory_plan import DEVICE_MEMORY


# Standard slice shapes by chip count (v4/v5p are 3-D tori, v5e/v6e 2-D).
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
              512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
# slice-name prefix -> (topology prefix, cores per chip counted in the slice name, 3-D?)
_SLICE_KINDS = {"v4": ("v4", 2, True), "v5p": ("v5p", 2, True), "v5litepod": ("v5e", 1, False),
                "v5e": ("v5e", 1, False), "v6e": ("v6e", 1, False)}


class AOTError(ValueError):
    """A config or topology the AOT check cannot use; the message names the input and the fix."""


def plain_dict(x):
    """ConfigDict/FrozenConfigDict -> plain dict (recursively); other values unchanged."""
    return x.to_dict() if hasattr(x, "to_dict") else x


# ----------------------------------------------------------------------------- topology


def topology_name(name: str) -> str:
    """`v5p:2x2x4` stays; a slice name such as `v5p-32`, `v4-16`, `v5litepod-16`, `v6e-8` is converted."""
    if ":" in name:
        return name
    kind, sep, count = name.rpartition("-")
    if not sep or kind not in _SLICE_KINDS or not count.isdigit():
        raise AOTError(f"--topology {name!r}: expected e.g. 'v5p:2x2x4' or a slice name like 'v5p-32', "
                       f"'v4-16', 'v5litepod-16', 'v6e-8' (kinds {sorted(_SLICE_KINDS)})")
    prefix, cores, three_d = _SLICE_KINDS[kind]
    chips = int(count) // cores
    shapes = _SHAPES_3D if three_d else _SHAPES_2D
    if chips not in shapes:
        raise AOTError(f"--topology {name!r}: no standard shape for {chips} chips; pass it as "
                       f"'{prefix}:AxBxC' (known: {sorted(shapes)} chips)")
    return f"{prefix}:{shapes[chips]}"


def topology_devices(name: str) -> list:
    """The TPU devices of a topology, compiled-for but not attached (needs libtpu installed)."""
    from jax.experimental import topologies

    topo = topology_name(name)
    # No TPU here: libtpu must not take its one-process lock (other compiles may run beside this one)
    # nor wait for a TPU VM's metadata server.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # v4 runs with one device per chip (megacore, as on a v4 TPU VM), not one per TensorCore
    kw = {"chip_config_name": "megacore"} if topo.startswith("v4:") else {}
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topo, **kw)
    except Exception as e:  # noqa: BLE001 - libtpu raises assorted types
        msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        if "lockfile" in msg:
            hint = "another process holds libtpu; set ALLOW_MULTIPLE_LIBTPU_LOAD=1 or wait for it"
        elif "topology" in msg.lower() or "invalid" in msg.lower():
            hint = "check the topology name (e.g. v5p:2x2x4, v5e:2x2, v4:2x2x2)"
        else:
            hint = "install libtpu into this environment (pip install 'libtpu==0.0.42.*', the version jax[tpu]==0.10.2 pins)"
        raise AOTError(f"cannot get TPU topology {topo!r}: {msg}; {hint}") from None
    return list(desc.devices)


def hbm_bytes(device) -> int:
    """HBM per chip for a TPU device kind (from a table; raise naming the kind if unknown)."""
    kind = device.device_kind
    if kind not in DEVICE_MEMORY:
        raise AOTError(f"unknown TPU device kind {kind!r}; add its HBM to DEVICE_MEMORY in "
                       "pilotrl_jax/train/memory_plan.py")
    return DEVICE_MEMORY[kind]


def topology_mesh(cfg, devices):
    """The config's (data, fsdp, tensor) mesh over the topology's devices."""
    from pilotrl_jax import sharding as sh

    try:
        return sh.make_mesh(plain_dict(cfg.mesh), devices)
    except ValueError as e:
        raise AOTError(f"config.mesh {plain_dict(cfg.mesh)} does not fit the topology ({len(devices)} chips): {e}") from None


def num_hosts(devices) -> int:
    """Hosts (worker VMs) of the topology."""
    return len({d.process_index for d in devices})


def host_devices(devices, topology: str) -> list:
    """One host's chips, as a host-sized topology of their own when their coordinates form a box
    (XLA will not compile for a few chips of some slices, e.g. v5e:8x8), else the chips themselves."""
    import math as _m

    first = min(d.process_index for d in devices)
    local = [d for d in devices if d.process_index == first]
    prefix, _, dims = topology_name(topology).partition(":")
    n = len(dims.split("x"))
    bounds = [max(d.coords[i] for d in local) - min(d.coords[i] for d in local) + 1 for i in range(n)]
    if _m.prod(bounds) != len(local):
        return local
    try:
        return topology_devices(f"{prefix}:{'x'.join(str(b) for b in bounds)}")
    except AOTError:
        return local


def sampler_mesh(cfg, devices, topology: str):
    """The sampler's mesh: the training mesh on one host; one host's chips on several (host-local sampler)."""
    from pilotrl_jax import sharding as sh
    from pilotrl_jax.train.multihost import sampler_mesh_shape

    if num_hosts(devices) == 1:
        return topology_mesh(cfg, devices)
    local = host_devices(devices, topology)
    return sh.make_mesh(sampler_mesh_shape(plain_dict(cfg.mesh), len(local)), local)


# ----------------------------------------------------------------------------- abstract inputs


def abstract_array(shape, dtype, sharding):
    """A weightless array of `shape` and `dtype` placed with `sharding` (what `.lower` compiles for)."""
    import jax

    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def abstract_params(model_cfg, mesh, dtype=None):
    """ShapeDtypeStructs of the params, with rules-table shardings (floating leaves in `dtype` if given)."""
    import jax
    import jax.numpy as jnp
    from pilotrl_jax.models import llama

    def one(s, sh_):
        dt = dtype if dtype is not None and jnp.issubdtype(s.dtype, jnp.floating) else s.dtype
        return abstract_array(s.shape, dt, sh_)

    return jax.tree.map(one, llama.param_shapes(model_cfg), llama.param_shardings(model_cfg, mesh))


def abstract_train_state(model_cfg, ppo_cfg, mesh):
    """ShapeDtypeStructs of a TrainState (params, optimizer moments, ...) with their shardings."""
    import jax
    import jax.numpy as jnp
    from pilotrl_jax.models import llama
    from pilotrl_jax.rl import ppo

    pshape = llama.param_shapes(model_cfg)
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    shapes = jax.eval_shape(lambda p, r: ppo.init_train_state(model_cfg, ppo_cfg, p, r), pshape, rng)
    shards = ppo.train_state_shardings(model_cfg, ppo_cfg, mesh)
    return jax.tree.map(lambda s, sh_: abstract_array(s.shape, s.dtype, sh_), shapes, shards)


def abstract_ppo_batch(ppo_cfg, mesh, rows: int, length: int) -> dict:
    """ShapeDtypeStructs of a [rows, length] PPO batch (the keys the step needs for this config)."""
    import jax.numpy as jnp
    from pilotrl_jax.rl import ppo

    s = ppo.batch_sharding(mesh)
    keys = {"input_ids": jnp.int32, "attention_mask": jnp.int32, "loss_mask": jnp.float32,
            "advantages": jnp.float32, "old_logprobs": jnp.float32}
    if ppo_cfg.kl_in_loss:
        keys["ref_logprobs"] = jnp.float32
    if ppo_cfg.use_critic:
        keys.update(returns=jnp.float32, old_values=jnp.float32)
    return {k: abstract_array((rows, length), dt, s) for k, dt in keys.items()}


def tree_bytes_per_chip(tree) -> int:
    """Bytes one chip holds of a tree of sharded ShapeDtypeStructs (largest shard per leaf)."""
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += int(np.prod(shard, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


# ----------------------------------------------------------------------------- compile + analyse


@dataclasses.dataclass
class Row:
    """One compiled function's per-chip numbers."""

    name: str
    shape: str
    tokens: int
    args: int = 0
    outputs: int = 0
    alias: int = 0
    temps: int = 0
    resident: int = 0  # what the trainer keeps in HBM beside this function (train state, sampler engine, ...)
    flops: float = 0.0  # HLO cost analysis, per chip (loop bodies counted once)
    model_flops: float = 0.0  # analytic, whole call, all chips (see model_flops_per_token)
    compile_s: float = 0.0
    hbm: int = 0
    error: str = ""
    chips: int = 0  # chips the call runs on (0 = the whole slice; a host-local sampler uses one host's)
    attention: str = ""  # the attention kernel it was compiled with (model.attention_impl, resolved)
    attn_flops: float = 0.0  # the attention's part of model_flops (analytic, dense convention)

    @property
    def peak(self) -> int:
        """Per-chip bytes while the function runs: args + outputs - donated + temps + resident state."""
        return self.args + self.outputs - self.alias + self.temps + self.resident

    def fits(self, fraction: float) -> bool:
        """Whether the peak stays under `fraction` of the chip's HBM."""
        return not self.error and self.peak < fraction * self.hbm


def _analyse(row: Row, lowered) -> Row:
    t0 = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - XLA reports OOM and friends as assorted errors
        row.error = str(e).splitlines()[0][:200]
        row.compile_s = time.perf_counter() - t0
        return row
    row.compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    if mem is not None:
        row.args, row.outputs = mem.argument_size_in_bytes, mem.output_size_in_bytes
        row.alias, row.temps = mem.alias_size_in_bytes, mem.temp_size_in_bytes
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    row.flops = float((cost or {}).get("flops", 0.0))
    return row


def model_flops_per_token(mc, context: int, train: bool) -> float:
    """Analytic FLOPs per token: 2*N_matmul + 4*L*context*H*Dh (dense attention), x3 for training.

    N_matmul excludes the embedding table (a lookup); remat recomputation is not counted (MFU convention)."""
    n = mc.num_params - (0 if mc.tie_word_embeddings else mc.vocab_size * mc.hidden_size)
    fwd = 2 * n + 4 * mc.num_layers * context * mc.num_heads * mc.head_dim
    return fwd * (3 if train else 1)


def attention_flops_per_token(mc, context: int, train: bool) -> float:
    """The attention's part of `model_flops_per_token`: 4*L*context*H*Dh (QK^T and PV, dense), x3 for training."""
    return 4 * mc.num_layers * context * mc.num_heads * mc.head_dim * (3 if train else 1)


@contextlib.contextmanager
def attention_context(model_cfg, mesh):
    """Trace for the mesh's platform (`models.attention.compile_for`); with a kernel (splash), also under
    `jax.set_mesh(mesh)` so it runs in shard_map over rows and heads. Yields the resolved implementation."""
    import jax
    from pilotrl_jax.models import attention

    platform = mesh.devices.flat[0].platform
    try:
        impl = attention.resolve(model_cfg.attention_impl, platform, dtype=model_cfg.dtype)
    except attention.AttentionUnavailable as e:
        raise AOTError(str(e)) from None
    with contextlib.ExitStack() as stack:
        stack.enter_context(attention.compile_for(platform))
        if impl != "xla":
            stack.enter_context(jax.set_mesh(mesh))
        yield impl


def compile_ppo_step(model_cfg, pc, mesh, rows: int, T: int) -> Row:
    """Compile the PPO step for a [rows, T] batch and return its Row."""
    from pilotrl_jax.rl import ppo

    n = pc.num_mini_batches * pc.num_micro_batches
    mb = rows // n
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    row = Row(f"ppo_step T={T}", f"{pc.num_mini_batches}x{pc.num_micro_batches}x{mb} rows", rows * T * pc.epochs)
    row.model_flops = row.tokens * model_flops_per_token(model_cfg, T, train=True)
    row.attn_flops = row.tokens * attention_flops_per_token(model_cfg, T, train=True)
    if mb % shards:
        row.error = (f"micro-batch of {mb} rows is not a multiple of data*fsdp={shards}; lower "
                     "rl.num_micro_batches or change config.mesh")
        return row
    step = ppo.make_ppo_step(model_cfg, pc, mesh, donate=True)
    state = abstract_train_state(model_cfg, pc, mesh)
    batch = abstract_ppo_batch(pc, mesh, rows, T)
    with attention_context(model_cfg, mesh) as row.attention:
        lowered = step.jitted.lower(state, batch)
    return _analyse(row, lowered)


def compile_logprobs(model_cfg, pc, mesh, rows: int, T: int) -> Row:
    """Compile the old/reference log-prob forward over a whole [rows, T] PPO batch (in the step's chunks)."""
    from pilotrl_jax.rl import ppo
    import jax.numpy as jnp

    chunks = pc.num_mini_batches * pc.num_micro_batches
    fn = ppo.make_logprob_fn(model_cfg, pc, mesh, chunks)
    s = ppo.batch_sharding(mesh)
    batch = {"input_ids": abstract_array((rows, T), jnp.int32, s), "attention_mask": abstract_array((rows, T), jnp.int32, s)}
    row = Row(f"logprobs T={T}", f"{chunks} chunks x{rows // chunks} rows", rows * T)
    row.model_flops = row.tokens * model_flops_per_token(model_cfg, T, train=False)
    row.attn_flops = row.tokens * attention_flops_per_token(model_cfg, T, train=False)
    with attention_context(model_cfg, mesh) as row.attention:
        lowered = fn.lower(abstract_params(model_cfg, mesh), batch)
    return _analyse(row, lowered)


def compile_values(model_cfg, pc, mesh, rows: int, T: int) -> Row:
    """Compile the critic's value forward over a whole [rows, T] PPO batch."""
    import jax
    import jax.numpy as jnp
    from pilotrl_jax.models import llama
    from pilotrl_jax.rl import ppo

    pc = dataclasses.replace(pc, use_critic=True, advantage_estimator="gae")
    chunks = pc.num_mini_batches * pc.num_micro_batches
    fn = ppo.make_value_fn(model_cfg, pc, mesh, chunks)
    shards = ppo.train_state_shardings(model_cfg, pc, mesh).critic_params
    shapes = jax.eval_shape(ppo.init_critic_params, llama.param_shapes(model_cfg))
    cparams = jax.tree.map(lambda a, b: abstract_array(a.shape, a.dtype, b), shapes, shards)
    s = ppo.batch_sharding(mesh)
    batch = {"input_ids": abstract_array((rows, T), jnp.int32, s), "attention_mask": abstract_array((rows, T), jnp.int32, s)}
    row = Row(f"critic_values T={T}", f"{chunks} chunks x{rows // chunks} rows", rows * T)
    row.model_flops = row.tokens * model_flops_per_token(model_cfg, T, train=False)
    row.attn_flops = row.tokens * attention_flops_per_token(model_cfg, T, train=False)
    with attention_context(model_cfg, mesh) as row.attention:
        lowered = fn.lower(cparams, batch)
    return _analyse(row, lowered)


def _sampler_inputs(model_cfg, mesh, B: int, W: int, params_dtype=None):
    from pilotrl_jax import sharding as sh
    from pilotrl_jax.models import llama
    from pilotrl_jax.sampling import engine

    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if B % shards:
        raise AOTError(f"the sampler's {B} rows (rollout.max_batch) are not a multiple of data*fsdp={shards}; "
                       "the cache's rows are sharded over them")
    dt = llama.dtype_of(model_cfg.dtype)  # the engine's default cache dtype
    dcfg = engine.decode_config(model_cfg)  # the engine decodes layer by layer, scanned model or not
    cache = engine.cache_structure(dcfg, B, W, dt,
                                   lambda shape, d, axes: abstract_array(shape, d, sh.named_sharding(mesh, axes, shape)))
    return dcfg, abstract_params(dcfg, mesh, params_dtype), cache


def compile_prefill(model_cfg, mesh, B: int, W: int, chunk: int, params_dtype=None, label: str = "") -> Row:
    """Compile one sampler prefill chunk over every cache row (B) at the full window (W)."""
    import jax.numpy as jnp
    from pilotrl_jax.sampling import engine

    dcfg, params, cache = _sampler_inputs(model_cfg, mesh, B, W, params_dtype)
    C = bucket_length(int(chunk), "pow2", engine.MIN_PREFILL)
    s = _row_sharding(mesh, B, 2)
    ids, pos = abstract_array((B, C), jnp.int32, s), abstract_array((B, C), jnp.int32, s)
    row = Row(f"{label}prefill C={C}", f"B={B} W={W}", B * C, chips=int(mesh.devices.size), attention="xla")
    row.model_flops = row.tokens * model_flops_per_token(model_cfg, W, train=False)
    row.attn_flops = row.tokens * attention_flops_per_token(model_cfg, W, train=False)
    return _analyse(row, engine._prefill.lower(dcfg, params, cache, ids, pos, mesh=mesh))


def compile_decode(model_cfg, mesh, B: int, W: int, chunk: int, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0, params_dtype=None, label: str = "") -> Row:
    """Compile the sampler's decode loop (`chunk` steps) over every cache row (B) at the full window (W)."""
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from pilotrl_jax.sampling import engine, filters

    dcfg, params, cache = _sampler_inputs(model_cfg, mesh, B, W, params_dtype)
    s = _row_sharding(mesh, B)
    rep = NamedSharding(mesh, P())
    state = {"tok": abstract_array((B,), jnp.int32, s), "pos": abstract_array((B,), jnp.int32, s), "done": abstract_array((B,), jnp.bool_, s),
             "reason": abstract_array((B,), jnp.int32, s), "n_new": abstract_array((B,), jnp.int32, s),
             "limit": abstract_array((B,), jnp.int32, s), "keys": abstract_array((B, 2), jnp.uint32, _row_sharding(mesh, B, 2))}
    table = abstract_array((model_cfg.vocab_size,), jnp.bool_, rep)
    sampling = (abstract_array((), jnp.float32, rep), abstract_array((), jnp.int32, rep), abstract_array((), jnp.float32, rep))
    scalar = abstract_array((), jnp.int32, rep)
    mode = filters.mode_for(float(temperature), int(top_k), float(top_p))
    chunk = int(chunk)
    row = Row(f"{label}decode x{chunk} ({mode})", f"B={B} W={W}", B * chunk, chips=int(mesh.devices.size),
              attention="xla")
    row.model_flops = row.tokens * model_flops_per_token(model_cfg, W, train=False)
    row.attn_flops = row.tokens * attention_flops_per_token(model_cfg, W, train=False)
    return _analyse(row, engine._decode.lower(dcfg, params, cache, state, table, table, sampling, scalar, scalar,
                                              mode=mode, chunk=chunk, mesh=mesh))


def _row_sharding(mesh, rows: int, ndim: int = 1):
    from pilotrl_jax import sharding as sh

    return sh.batch_sharding(mesh, ndim, rows)


def compile_paged_decode(model_cfg, mesh, B: int, W: int, num_pages: int, page_size: int, chunk: int,
                         impl: str = "ragged", temperature: float = 1.0, params_dtype=None) -> Row:
    """Compile the paged sampler's decode loop (`sampling.paged._paged_decode`, `chunk` steps) over B rows at
    window W with a pool of `num_pages` pages (+ the trash page) per layer, kv heads over the mesh's tensor
    axis (rows unsharded: the paged engine needs data x fsdp = 1)."""
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from pilotrl_jax.models import llama
    from pilotrl_jax.sampling import engine, filters, paged, paged_cache

    if mesh.shape["data"] * mesh.shape["fsdp"] != 1:
        raise AOTError(f"the paged sampler needs a sampler mesh with data = fsdp = 1; got {dict(mesh.shape)}")
    dcfg = engine.decode_config(model_cfg)
    dt = llama.dtype_of(model_cfg.dtype)
    pool_sharding = NamedSharding(mesh, paged_cache.pool_spec(dcfg, mesh))
    pools = paged_cache.pool_structure(dcfg, num_pages, page_size, dt,
                                       lambda shape, d: abstract_array(shape, d, pool_sharding))
    rep = NamedSharding(mesh, P())
    nb = paged.pages_for(W, page_size) + paged.pages_for(256, page_size) + 1
    bt = abstract_array((B, nb), jnp.int32, rep)
    state = {k: abstract_array((B,), jnp.bool_ if k == "done" else jnp.int32, rep)
             for k in ("tok", "pos", "done", "reason", "n_new", "limit")}
    state["keys"] = abstract_array((B, 2), jnp.uint32, rep)
    table = abstract_array((model_cfg.vocab_size,), jnp.bool_, rep)
    sampling = (abstract_array((), jnp.float32, rep), abstract_array((), jnp.int32, rep),
                abstract_array((), jnp.float32, rep))
    scalar = abstract_array((), jnp.int32, rep)
    mode = filters.mode_for(float(temperature), 0, 1.0)
    row = Row(f"paged decode x{chunk} ({impl})", f"B={B} W={W} pages={num_pages}x{page_size}", B * chunk,
              chips=int(mesh.devices.size), attention=impl)
    row.model_flops = row.tokens * model_flops_per_token(model_cfg, W, train=False)
    lowered = paged._paged_decode.lower(dcfg, abstract_params(dcfg, mesh, params_dtype), pools, bt, state, table,
                                        table, sampling, scalar, scalar, mode=mode, chunk=int(chunk), window=W,
                                        impl=impl, mesh=mesh)
    return _analyse(row, lowered)
