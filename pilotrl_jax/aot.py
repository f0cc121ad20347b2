"""Ahead-of-time compilation for a Cloud TPU topology on this (CPU) host: does a config fit a slice?

    python -m pilotrl_jax.aot --config configs/tpu_llama31_8b.py --topology v5p:2x2x4

compiles, with abstract inputs only (`jax.ShapeDtypeStruct` carrying the rules-table shardings; no
weights are read or allocated), at the shapes the trainer (`python -m pilotrl_jax.train`) runs for
the config's first RL stage (or --stage), every one derived with the trainer's own functions
(`pilotrl_jax.train.shapes`): tasks_per_step x group_size rows, rl mini- and micro-batches, PPO batch
lengths as the trainer pads them (`trainer.seq_bucket`: powers of two, or multiples of
rollout.pad_multiple), the sampler engines `train.evaluation.make_engine` builds (their own prefill and
decode chunks), config.mesh:
- the PPO step (`rl.ppo.make_ppo_step`) for each batch length (config.aot.seq_buckets, else the
  buckets of 1/4, 1/2 and all of agent.token_budget; --buckets picks some),
- the old/reference log-prob forward (`rl.ppo.make_logprob_fn`) and, with a critic, the value forward,
- the sampler's prefill and decode steps (`sampling.engine._prefill` / `_decode`) at their worst case
  (every cache row, the whole window, the largest prefill chunk), for the rollout engine (its rows:
  rollout.max_batch, or what the memory plan derives when it is 0, at the rollout's sampling settings)
  and for the held-out evaluation's engine (its rows and eval.temperature / eval.top_p). On a
  multi-host slice the sampler is host-local (as the trainer runs it, `pilotrl_jax.train.multihost`):
  it is compiled over one host's chips with that host's share of the rows (rollout.max_batch is per
  host), its own copy of the params, and the whole train-state shard resident beside it,
and prints per chip: memory (`compiled.memory_analysis()`: arguments, outputs, temps), what stays
resident beside each function (the optimizer state beside the forwards and the sampler; the rollout
engine's KV cache and params copy beside the PPO step and the forwards, since the trainer keeps them
for the whole stage), the peak against the chip's HBM, FLOPs (analytic, and
`compiled.cost_analysis()`), tokens per call, and whether it fits under `--max-hbm-fraction`. The
memory plan's estimate (`pilotrl_jax.train.memory_plan`) is printed beside the table.
The model comes from `config.model.hf_config` (an HF config dict), else `config.model.path`.

Needs `pip install 'libtpu==0.0.42.*'` (the version jax[tpu]==0.10.2 pins; 0.0.42.1 tested) so JAX can compile for TPU without one.
Topologies: `v5p:2x2x4`-style names (as `jax.experimental.topologies` takes them) or slice names
such as `v5p-32`, `v4-16`, `v5litepod-16`, `v6e-8`.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import sys
import time
from typing import Optional, Sequence

from pilotrl_jax.train.memory_plan import DEVICE_MEMORY, GIB

# Config keys this check once had for settings the trainer decides elsewhere: refused by name.
_RETIRED_AOT_KEYS = {
    "prefill_chunk": "the trainer's sampler engines use SamplerEngine's own prefill_chunk",
    "decode_chunk": "the trainer's sampler engines use SamplerEngine's own decode_chunk",
}

# Peak dense bf16 FLOP/s per chip by device kind (for the ideal-time column).
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5": 459e12, "TPU v5p": 459e12,
              "TPU v6 lite": 918e12, "TPU v6e": 918e12}

# Standard slice shapes by chip count (v4/v5p are 3-D tori, v5e/v6e 2-D).
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
              512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
# slice-name prefix -> (topology prefix, cores per chip counted in the slice name, 3-D?)
_SLICE_KINDS = {"v4": ("v4", 2, True), "v5p": ("v5p", 2, True), "v5litepod": ("v5e", 1, False),
                "v5e": ("v5e", 1, False), "v6e": ("v6e", 1, False)}


class AOTError(ValueError):
    """A config or topology the AOT check cannot use; the message names the input and the fix."""


# ----------------------------------------------------------------------------- configs


def load_config(spec: str):
    """Load an ml_collections config from `path.py` or `path.py:arg` (calls its `get_config([arg])`)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise AOTError(f"--config {spec!r}: no file {path!r}; pass a python file with get_config(), "
                       "e.g. configs/tpu_llama31_8b.py")
    name = "_pilotrl_cfg_" + os.path.splitext(os.path.basename(path))[0]
    spec_obj = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec_obj)
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)  # config files import their neighbours (configs_common) by name
    try:
        spec_obj.loader.exec_module(mod)
    finally:
        sys.path.remove(folder)
    if not hasattr(mod, "get_config"):
        raise AOTError(f"--config {path!r} has no get_config(); define `def get_config(arg=None) -> ConfigDict`")
    return mod.get_config(arg) if arg else mod.get_config()


def _plain(x):
    """ConfigDict/FrozenConfigDict -> plain dict (recursively); other values unchanged."""
    return x.to_dict() if hasattr(x, "to_dict") else x


def _aot(cfg, key: str, default):
    """cfg.aot.<key> if the config has an `aot` section with it, else `default`."""
    sec = cfg.get("aot") or {}
    return sec.get(key, default) if hasattr(sec, "get") else default


def model_config(cfg, **overrides):
    """LlamaConfig for the run (`train.shapes.model_config`): `model.path`'s config.json when it exists,
    else `model.hf_config` (an HF config dict in the config file), or the tiny fields (`model.source='tiny'`)."""
    from pilotrl_jax.train import shapes

    try:
        return shapes.model_config(cfg, **overrides)
    except FileNotFoundError as e:
        raise AOTError(str(e)) from None


def rl_stages(cfg) -> list:
    """Names of the RL stages in the config's pipeline, in order."""
    from pilotrl_jax.train import config as C

    return [n for n in C.pipeline(cfg) if cfg.stages[n].kind == "rl"]


def stage_settings(cfg, stage: Optional[str] = None):
    """The trainer's resolved settings of one RL stage (default: the pipeline's first RL stage)."""
    from pilotrl_jax.train import config as C

    stages = rl_stages(cfg)
    if not stages:
        raise AOTError(f"config.pipeline={cfg.pipeline!r} has no RL stage; the AOT check compiles the PPO step")
    name = stage or stages[0]
    if name not in cfg.stages or cfg.stages[name].kind != "rl":
        raise AOTError(f"--stage {name!r} is not an RL stage of this config; RL stages: {stages}")
    try:
        return C.resolve_stage(cfg, name)
    except ValueError as e:
        raise AOTError(str(e)) from None


def rollouts_per_step(cfg, stage: Optional[str] = None) -> int:
    """Rows of one PPO batch: tasks per step x group size."""
    st = stage_settings(cfg, stage)
    return int(st.tasks_per_step) * int(st.group_size)


def ppo_config(cfg, stage: Optional[str] = None):
    """The stage's PPOConfig (mini/micro-batches from config.rl), checked against the rows per step."""
    st = stage_settings(cfg, stage)
    pc = st.ppo
    rows = int(st.tasks_per_step) * int(st.group_size)
    n = pc.num_mini_batches * pc.num_micro_batches
    if rows % n:
        raise AOTError(f"tasks_per_step*group_size={rows} rows are not divisible by rl.num_mini_batches*"
                       f"rl.num_micro_batches={n}; choose micro-batches that divide {rows // pc.num_mini_batches}")
    return pc


def seq_buckets(cfg) -> list:
    """PPO batch lengths to compile: config.aot.seq_buckets, else the trainer's buckets of 1/4, 1/2 and
    all of agent.token_budget (`train.shapes.seq_lengths`: powers of two, or multiples of rollout.pad_multiple)."""
    from pilotrl_jax.train import shapes

    got = _aot(cfg, "seq_buckets", None)
    if got:
        return [int(b) for b in got]
    return shapes.seq_lengths(cfg)


def check_geometry(cfg, stage: Optional[str] = None) -> None:
    """Raise AOTError naming the field when buckets, budget and micro-batches do not line up with the trainer."""
    from pilotrl_jax.train import shapes

    retired = sorted(k for k in _RETIRED_AOT_KEYS if k in (cfg.get("aot") or {}))
    if retired:
        k = retired[0]
        raise AOTError(f"config.aot.{k} is not read: {_RETIRED_AOT_KEYS[k]} (train.shapes.engine_chunks: "
                       f"{shapes.engine_chunks()}), so the check compiles those; remove config.aot.{k}")
    b = seq_buckets(cfg)
    if b != sorted(b) or len(set(b)) != len(b):
        raise AOTError(f"config.aot.seq_buckets={tuple(b)} must be strictly increasing")
    budget, longest, bucket = int(cfg.agent.token_budget), shapes.longest_seq_len(cfg), shapes.seq_bucket(cfg)
    how = "powers of two" if bucket == "pow2" else f"multiples of rollout.pad_multiple={bucket}"
    odd = [x for x in b if not shapes.is_seq_len(cfg, x)]
    if odd:
        raise AOTError(f"config.aot.seq_buckets has {odd}, which the trainer never pads a PPO batch to (it pads to "
                       f"{how}, at most {longest} for agent.token_budget={budget}); use lengths such as "
                       f"{shapes.seq_lengths(cfg)}")
    if b[-1] != longest:
        raise AOTError(f"the largest bucket {b[-1]} is not the trainer's longest PPO batch {longest} "
                       f"(agent.token_budget={budget} padded to {how}); add {longest} to config.aot.seq_buckets "
                       "or lower the budget")
    ppo_config(cfg, stage)


def sampler_rows(cfg, stage: Optional[str] = None, hosts: int = 1, max_batch: Optional[int] = None) -> int:
    """Episodes one host's rollout engine holds at once, as the trainer sizes it (`train.shapes.rollout_rows`):
    rollout.max_batch (or `max_batch`; 0 = all of the host's rows of a step: its share of the tasks x group size)."""
    from pilotrl_jax.train import shapes

    return shapes.rollout_rows(cfg, stage_settings(cfg, stage), hosts, max_batch)


def sampler_shapes(cfg, stage: Optional[str] = None, hosts: int = 1, row_shards: int = 1,
                   max_batch: Optional[int] = None) -> list:
    """The trainer's sampler engines at their worst case (`train.shapes.SamplerShape`): the rollout engine and
    the stage-end evaluation's, on one host whose sampler mesh splits rows `row_shards` ways."""
    from pilotrl_jax.train import shapes

    rollout = shapes.sampler_shape(cfg, "rollout", sampler_rows(cfg, stage, hosts, max_batch), row_shards)
    ev = shapes.sampler_shape(cfg, "eval", shapes.eval_rows(cfg, hosts), row_shards)
    same = (ev.batch, ev.rows, ev.mode) == (rollout.batch, rollout.rows, rollout.mode)
    return [rollout] if same else [rollout, ev]


def memory_plan(cfg, stage: Optional[str], devices, hbm: int):
    """The trainer's memory plan of the stage on these chips (`train.memory_plan.plan_stage`), or None when
    config.rollout.memory_budget_gib turns it off."""
    from pilotrl_jax.train import memory_plan as MP

    dev = MP.Devices(count=len(devices), hosts=num_hosts(devices), memory=hbm, kind=devices[0].device_kind,
                     source=f"{devices[0].device_kind} HBM")
    limit, _ = MP.budget(cfg, dev)
    if not limit:
        return None
    return MP.plan_stage(cfg, stage_settings(cfg, stage), model_config(cfg), dev, limit)


def plan_summary(p) -> str:
    """One paragraph: the memory plan's per-chip estimate of each phase, and its fixes when it does not fit."""
    from pilotrl_jax.train.memory_plan import gib

    if p is None:
        return "memory plan: off (config.rollout.memory_budget_gib < 0)"
    e = p.estimate
    text = (f"memory plan (analytic estimate, budget {gib(p.budget)}/chip): rollout {gib(e.total('rollout'))}, update "
            f"{gib(e.total('update'))}, eval {gib(e.total('eval'))} per chip at {p.geometry.sampler_rows} rollout rows")
    if p.max_batch:
        text += f" (rollout.max_batch=0 -> {p.max_batch}, as the trainer derives it)"
    return text + "".join(f"\n  - does not fit: {f}" for f in p.fixes)


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
        return sh.make_mesh(_plain(cfg.mesh), devices)
    except ValueError as e:
        raise AOTError(f"config.mesh {_plain(cfg.mesh)} does not fit the topology ({len(devices)} chips): {e}") from None


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
    return sh.make_mesh(sampler_mesh_shape(_plain(cfg.mesh), len(local)), local)


# ----------------------------------------------------------------------------- abstract inputs


def _sds(shape, dtype, sharding):
    import jax

    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def abstract_params(model_cfg, mesh, dtype=None):
    """ShapeDtypeStructs of the params, with rules-table shardings (floating leaves in `dtype` if given)."""
    import jax
    import jax.numpy as jnp
    from pilotrl_jax.models import llama

    def one(s, sh_):
        dt = dtype if dtype is not None and jnp.issubdtype(s.dtype, jnp.floating) else s.dtype
        return _sds(s.shape, dt, sh_)

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
    return jax.tree.map(lambda s, sh_: _sds(s.shape, s.dtype, sh_), shapes, shards)


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
    return {k: _sds((rows, length), dt, s) for k, dt in keys.items()}


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


def compile_ppo_step(model_cfg, pc, mesh, rows: int, T: int) -> Row:
    """Compile the PPO step for a [rows, T] batch and return its Row."""
    from pilotrl_jax.rl import ppo

    n = pc.num_mini_batches * pc.num_micro_batches
    mb = rows // n
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    row = Row(f"ppo_step T={T}", f"{pc.num_mini_batches}x{pc.num_micro_batches}x{mb} rows", rows * T * pc.epochs)
    row.model_flops = row.tokens * model_flops_per_token(model_cfg, T, train=True)
    if mb % shards:
        row.error = (f"micro-batch of {mb} rows is not a multiple of data*fsdp={shards}; lower "
                     "rl.num_micro_batches or change config.mesh")
        return row
    step = ppo.make_ppo_step(model_cfg, pc, mesh, donate=True)
    state = abstract_train_state(model_cfg, pc, mesh)
    batch = abstract_ppo_batch(pc, mesh, rows, T)
    return _analyse(row, step.jitted.lower(state, batch))


def compile_logprobs(model_cfg, pc, mesh, rows: int, T: int) -> Row:
    """Compile the old/reference log-prob forward over a whole [rows, T] PPO batch (in the step's chunks)."""
    from pilotrl_jax.rl import ppo
    import jax.numpy as jnp

    chunks = pc.num_mini_batches * pc.num_micro_batches
    fn = ppo.make_logprob_fn(model_cfg, pc, mesh, chunks)
    s = ppo.batch_sharding(mesh)
    batch = {"input_ids": _sds((rows, T), jnp.int32, s), "attention_mask": _sds((rows, T), jnp.int32, s)}
    row = Row(f"logprobs T={T}", f"{chunks} chunks x{rows // chunks} rows", rows * T)
    row.model_flops = row.tokens * model_flops_per_token(model_cfg, T, train=False)
    return _analyse(row, fn.lower(abstract_params(model_cfg, mesh), batch))


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
    cparams = jax.tree.map(lambda a, b: _sds(a.shape, a.dtype, b), shapes, shards)
    s = ppo.batch_sharding(mesh)
    batch = {"input_ids": _sds((rows, T), jnp.int32, s), "attention_mask": _sds((rows, T), jnp.int32, s)}
    row = Row(f"critic_values T={T}", f"{chunks} chunks x{rows // chunks} rows", rows * T)
    row.model_flops = row.tokens * model_flops_per_token(model_cfg, T, train=False)
    return _analyse(row, fn.lower(cparams, batch))


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
                                   lambda shape, d, axes: _sds(shape, d, sh.named_sharding(mesh, axes, shape)))
    return dcfg, abstract_params(dcfg, mesh, params_dtype), cache


def compile_prefill(model_cfg, mesh, B: int, W: int, chunk: int, params_dtype=None, label: str = "") -> Row:
    """Compile one sampler prefill chunk over every cache row (B) at the full window (W)."""
    import jax.numpy as jnp
    from pilotrl_jax.sampling import engine

    dcfg, params, cache = _sampler_inputs(model_cfg, mesh, B, W, params_dtype)
    C = engine.pow2_bucket(int(chunk), engine.MIN_PREFILL)
    s = _row_sharding(mesh, B, 2)
    ids, pos = _sds((B, C), jnp.int32, s), _sds((B, C), jnp.int32, s)
    row = Row(f"{label}prefill C={C}", f"B={B} W={W}", B * C, chips=int(mesh.devices.size))
    row.model_flops = row.tokens * model_flops_per_token(model_cfg, W, train=False)
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
    state = {"tok": _sds((B,), jnp.int32, s), "pos": _sds((B,), jnp.int32, s), "done": _sds((B,), jnp.bool_, s),
             "reason": _sds((B,), jnp.int32, s), "n_new": _sds((B,), jnp.int32, s),
             "limit": _sds((B,), jnp.int32, s), "keys": _sds((B, 2), jnp.uint32, _row_sharding(mesh, B, 2))}
    table = _sds((model_cfg.vocab_size,), jnp.bool_, rep)
    sampling = (_sds((), jnp.float32, rep), _sds((), jnp.int32, rep), _sds((), jnp.float32, rep))
    scalar = _sds((), jnp.int32, rep)
    mode = filters.mode_for(float(temperature), int(top_k), float(top_p))
    chunk = int(chunk)
    row = Row(f"{label}decode x{chunk} ({mode})", f"B={B} W={W}", B * chunk, chips=int(mesh.devices.size))
    row.model_flops = row.tokens * model_flops_per_token(model_cfg, W, train=False)
    return _analyse(row, engine._decode.lower(dcfg, params, cache, state, table, table, sampling, scalar, scalar,
                                              mode=mode, chunk=chunk, mesh=mesh))


def _row_sharding(mesh, rows: int, ndim: int = 1):
    from pilotrl_jax import sharding as sh

    return sh.batch_sharding(mesh, ndim, rows)


# ----------------------------------------------------------------------------- driver


def kv_cache_bytes_per_chip(model_cfg, mesh, rows: int, window: int) -> int:
    """Per-chip bytes of a sampler engine's KV cache of `rows` rows (`sampling.engine.cache_structure`)."""
    from pilotrl_jax import sharding as sh
    from pilotrl_jax.models import llama
    from pilotrl_jax.sampling import engine

    cache = engine.cache_structure(engine.decode_config(model_cfg), rows, window, llama.dtype_of(model_cfg.dtype),
                                   lambda shape, d, axes: _sds(shape, d, sh.named_sharding(mesh, axes, shape)))
    return tree_bytes_per_chip(cache)


def run(cfg, topology: str, buckets: Optional[Sequence[int]] = None, parts: Sequence[str] = ("ppo", "ref", "sampler"),
        stage: Optional[str] = None, log=print) -> tuple[list, dict]:
    """Compile the config's functions for `topology`; returns (rows, info) for `format_table`."""
    from pilotrl_jax.models import llama
    from pilotrl_jax.sampling import engine
    from pilotrl_jax.train import shapes

    check_geometry(cfg, stage)
    devices = topology_devices(topology)
    mesh = topology_mesh(cfg, devices)
    hbm = hbm_bytes(devices[0])
    mc = model_config(cfg)
    st = stage_settings(cfg, stage)
    pc = ppo_config(cfg, stage)
    rows = rollouts_per_step(cfg, stage)
    all_buckets = seq_buckets(cfg)
    wanted = all_buckets if not buckets else [int(b) for b in buckets]
    bad = [b for b in wanted if b not in all_buckets]
    if bad:
        raise AOTError(f"--buckets {bad} are not among the config's buckets {tuple(all_buckets)} (config.aot.seq_buckets)")
    state_bytes = tree_bytes_per_chip(abstract_train_state(mc, pc, mesh))
    param_bytes = tree_bytes_per_chip(abstract_params(mc, mesh))
    hosts = num_hosts(devices)
    smesh = sampler_mesh(cfg, devices, topology)
    # the sampler holds its own copy of the params on several hosts (in the compute dtype), and on one
    # host when the model scans its layers (it decodes with a per-layer copy)
    s_dtype = None if hosts == 1 else llama.dtype_of(mc.dtype)
    copy = hosts > 1 or mc.scan_layers
    copy_bytes = tree_bytes_per_chip(abstract_params(engine.decode_config(mc), smesh, s_dtype)) if copy else 0
    plan = memory_plan(cfg, stage, devices, hbm)
    shapes_ = sampler_shapes(cfg, stage, hosts, smesh.shape["data"] * smesh.shape["fsdp"],
                             plan.max_batch if plan is not None else None)
    roll = shapes_[0]
    roll_cache = kv_cache_bytes_per_chip(mc, smesh, roll.rows, roll.window)
    every = int(cfg.eval.get("every", 0) or 0)
    during = shapes.eval_rows(cfg, hosts, group_size=1) if every > 0 else 0  # evaluations inside the stage
    during_cache = kv_cache_bytes_per_chip(mc, smesh, during, roll.window) if during else 0
    # Beside the PPO step and the log-prob forward (which use the train state's params) the trainer keeps
    # the rollout engine (its KV cache and params copy), the reference params (KL), and in the forwards
    # the rest of the train state; beside a sampler call, the whole train state (or, without a params
    # copy, all of it but the params its arguments hold).
    engine_bytes = roll_cache + copy_bytes + during_cache
    ref_bytes = param_bytes if pc.needs_ref else 0
    ppo_resident = engine_bytes + ref_bytes
    fwd_resident = state_bytes - param_bytes + engine_bytes + ref_bytes
    s_resident = (state_bytes if copy else state_bytes - param_bytes) + ref_bytes
    info = dict(topology=topology_name(topology), chips=len(devices), kind=devices[0].device_kind, hbm=hbm,
                mesh=dict(mesh.shape), model=_param_count(mc.num_params), state_bytes=state_bytes,
                rollouts=rows, name=f"stage {st.name}", hosts=hosts, sampler_mesh=dict(smesh.shape),
                sampler_rows=roll.rows, engine_bytes=engine_bytes, plan=plan_summary(plan))
    jobs = []
    for T in wanted:
        if "ppo" in parts:
            jobs.append(lambda T=T: _with_resident(compile_ppo_step(mc, pc, mesh, rows, T), ppo_resident))
        if "ref" in parts:
            jobs.append(lambda T=T: _with_resident(compile_logprobs(mc, pc, mesh, rows, T), fwd_resident))
        if "critic" in parts or (pc.use_critic and "ref" in parts):
            jobs.append(lambda T=T: _with_resident(compile_values(mc, pc, mesh, rows, T), fwd_resident))
    if "sampler" in parts:
        for sh_ in shapes_:
            label = "" if sh_.role == "rollout" else "eval "
            # the cache rows beyond the call's (a gathered sub-batch) and the other engine's cache stay
            extra = (kv_cache_bytes_per_chip(mc, smesh, sh_.rows, sh_.window) if sh_.batch != sh_.rows else 0) + (
                during_cache if sh_.role == "rollout" else roll_cache if every > 0 else 0)
            jobs.append(lambda sh_=sh_, label=label, extra=extra: _with_resident(
                compile_prefill(mc, smesh, sh_.batch, sh_.window, sh_.prefill_chunk, s_dtype, label),
                s_resident + extra))
            jobs.append(lambda sh_=sh_, label=label, extra=extra: _with_resident(
                compile_decode(mc, smesh, sh_.batch, sh_.window, sh_.decode_chunk, sh_.temperature, sh_.top_k,
                               sh_.top_p, s_dtype, label), s_resident + extra))
    out = []
    for job in jobs:
        row = job()
        row.hbm = hbm
        log(f"  compiled {row.name:<24} in {row.compile_s:6.1f}s" + (f"  ERROR {row.error}" if row.error else ""))
        out.append(row)
    return out, info


def _param_count(n: int) -> str:
    return f"{n / 1e9:.2f}B params" if n >= 1e9 else f"{n / 1e6:.2f}M params"


def _with_resident(row: Row, resident: int) -> Row:
    row.resident = resident
    return row


def _gib(x: int) -> str:
    return f"{x / GIB:.2f}"


def _size(x: int) -> str:
    """Bytes as GiB, or MiB/KiB when small."""
    if abs(x) >= GIB / 10:
        return f"{x / GIB:.2f} GiB"
    if abs(x) >= 1024 ** 2 / 10:
        return f"{x / 1024 ** 2:.1f} MiB"
    return f"{x / 1024:.1f} KiB"


def format_table(rows: Sequence[Row], info: dict, fraction: float = 0.9) -> str:
    """A markdown table of per-chip memory, FLOPs, tokens and fit for each compiled function."""
    head = (f"{info['name']}: {info['model']} on {info['topology']} ({info['chips']} x {info['kind']}, "
            f"{_gib(info['hbm'])} GiB HBM/chip), mesh {info['mesh']}, {info['rollouts']} rollouts/step; "
            f"train state {_gib(info['state_bytes'])} GiB/chip")
    if info.get("hosts", 1) > 1:
        head += (f"; {info['hosts']} hosts, each sampling on its own {math.prod(info['sampler_mesh'].values())} chips "
                 f"(mesh {info['sampler_mesh']}, {info['sampler_rows']} rows)")
    peak = PEAK_FLOPS.get(info["kind"], 0.0)
    cols = ["function", "shape", "args", "outputs", "donated", "temps", "+resident", "peak/chip", "% HBM",
            f"fits (<{fraction:.0%})", "tokens/call", "model TFLOP/chip", "ideal s", "HLO TFLOP/chip", "compile s"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        per_chip = r.model_flops / (r.chips or info["chips"])
        ideal = f"{per_chip / peak:.2f}" if peak else "-"
        common = [f"{r.tokens:,}", f"{per_chip / 1e12:.1f}", ideal]
        if r.error:
            vals = [r.name, r.shape] + ["-"] * 7 + ["ERROR: " + r.error] + common + ["-", f"{r.compile_s:.0f}"]
        else:
            vals = [r.name, r.shape, _size(r.args), _size(r.outputs), _size(r.alias), _size(r.temps),
                    _size(r.resident), _size(r.peak), f"{100 * r.peak / r.hbm:.0f}%",
                    "yes" if r.fits(fraction) else "NO"] + common + [f"{r.flops / 1e12:.2f}", f"{r.compile_s:.0f}"]
        lines.append("| " + " | ".join(vals) + " |")
    lines.append("")
    lines.append("peak = args + out - alias (donated) + temps + resident (what the trainer keeps in HBM beside "
                 "the function: beside the PPO step and the log-prob forward, the rollout engine's KV cache and params "
                 "copy (the trainer keeps them for the whole stage), the KL reference params, and beside the forward "
                 "the optimizer state; beside a sampler call the train state (all but the params its arguments hold "
                 "when it has no copy of its own) and, with eval.every > 0, the other engine's cache); "
                 "model FLOPs = tokens x (2 N_matmul + 4 L T H Dh), x3 "
                 "for training, no remat recompute; ideal s = model FLOPs per chip / peak bf16 FLOP/s; HLO FLOPs "
                 "(cost_analysis) count each loop body once (scans over epochs, mini/micro-batches and layers).")
    if info.get("plan"):
        lines += ["", info["plan"]]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI: compile a config for a TPU topology and print the fit table; exit 1 if something does not fit."""
    p = argparse.ArgumentParser(prog="python -m pilotrl_jax.aot", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="configs/<file>.py[:arg]")
    p.add_argument("--topology", default=None, help="e.g. v5p:2x2x4 or v5p-32 (default: config.tpu.topology)")
    p.add_argument("--buckets", default="", help="comma-separated sequence buckets (default: all)")
    p.add_argument("--stage", default=None, help="RL stage of the pipeline (default: the first)")
    p.add_argument("--parts", default="ppo,ref,sampler", help="comma-separated subset of ppo,ref,critic,sampler")
    p.add_argument("--max-hbm-fraction", type=float, default=None, help="fit threshold (default config.aot or 0.9)")
    args = p.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        cfg = load_config(args.config)
        topo = args.topology or (cfg.get("tpu") or {}).get("topology")
        if not topo:
            raise AOTError("no --topology and no config.tpu.topology; pass e.g. --topology v5p:2x2x4")
        parts = tuple(x for x in args.parts.split(",") if x)
        unknown = set(parts) - {"ppo", "ref", "critic", "sampler"}
        if unknown:
            raise AOTError(f"--parts has {sorted(unknown)}; expected a subset of ppo,ref,critic,sampler")
        buckets = [int(b) for b in args.buckets.split(",") if b]
        frac = args.max_hbm_fraction or float(_aot(cfg, "max_hbm_fraction", 0.9))
        print(f"AOT-compiling {args.config} for {topology_name(topo)} ...", flush=True)
        rows, info = run(cfg, topo, buckets, parts, args.stage, log=lambda s: print(s, flush=True))
        info["name"] = f"{args.config} ({info['name']})"
    except AOTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(rows, info, frac))
    return 0 if all(r.fits(frac) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
