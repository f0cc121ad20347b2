"""Multi-host JAX: start-up, global batches from per-host data, process-0 logging, barriers.

On a Cloud TPU pod every worker (host) runs the same command; `initialize()` connects them with
`jax.distributed.initialize()` (the coordinator is found from the TPU metadata). Elsewhere, e.g.
several CPU processes on one machine for tests, it is driven by flags or environment variables:

    PILOTRL_COORDINATOR=127.0.0.1:12355  PILOTRL_NUM_PROCESSES=2  PILOTRL_PROCESS_ID=0|1
    PILOTRL_CPU_DEVICES=4    # optional: fake CPU devices per process (set before JAX starts its backend)

After `initialize()`, `jax.devices()` lists every chip of every host; a mesh built from it with
`pilotrl_jax.sharding.make_mesh` spans the slice. Each host produces only the rows of a batch that
its own devices hold (`process_rows`, or `row_blocks` when a topology-ordered mesh gives a host
several blocks), and `global_batch` / `global_batch_from_blocks` assemble the global jax.Array from
them. Small host collectives (`max_over_hosts`, `any_host`, `allgather_json`) agree on shapes, stop
signals and metrics; `host_local_copies` gives every host its own copy of a sharded tree (a
host-local sampler). Orbax checkpoints of sharded arrays are written by every host (each its own shards).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Optional, Sequence

import jax
import numpy as np

ENV_COORDINATOR = "PILOTRL_COORDINATOR"
ENV_NUM_PROCESSES = "PILOTRL_NUM_PROCESSES"
ENV_PROCESS_ID = "PILOTRL_PROCESS_ID"
ENV_CPU_DEVICES = "PILOTRL_CPU_DEVICES"
# Set on Cloud TPU VMs; a multi-host slice lists several worker hostnames.
_TPU_ENV_HINTS = ("TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID", "TPU_WORKER_ID")

_initialized = False


def _env_int(name: str) -> Optional[int]:
    v = os.environ.get(name)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"environment variable {name}={v!r} is not an integer; unset it or give a number") from None


def on_tpu_pod() -> bool:
    """Whether this looks like one worker of a multi-host Cloud TPU slice (from the TPU VM env vars)."""
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h.strip()]) > 1


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, cpu_devices: Optional[int] = None,
               timeout_s: int = 300) -> bool:
    """Connect this process to the others (jax.distributed); True if multi-process, False if single.

    Arguments override the PILOTRL_* environment variables. With neither, a multi-host TPU slice
    is auto-detected (jax.distributed.initialize() with no arguments); otherwise nothing happens.
    Safe to call twice. Must run before anything touches jax devices or arrays.
    """
    global _initialized
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    cpu_devices = cpu_devices if cpu_devices is not None else _env_int(ENV_CPU_DEVICES)
    if cpu_devices is not None:
        if cpu_devices < 1:
            raise ValueError(f"cpu_devices={cpu_devices} ({ENV_CPU_DEVICES}); expected >= 1")
        jax.config.update("jax_num_cpu_devices", int(cpu_devices))
    if _initialized:
        return jax.process_count() > 1
    if coordinator_address:
        if num_processes is None or process_id is None:
            raise ValueError(
                f"coordinator {coordinator_address!r} given without num_processes/process_id; set "
                f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} (or pass them) on every process")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process_id={process_id} is outside [0, num_processes={num_processes})")
        if ":" not in coordinator_address:
            raise ValueError(f"coordinator address {coordinator_address!r} lacks a port; use host:port, "
                             "e.g. 127.0.0.1:12355")
        # CPU processes exchange collectives through gloo (the default today; set explicitly).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   initialization_timeout=timeout_s)
        _initialized = True
        return num_processes > 1
    if on_tpu_pod():
        jax.distributed.initialize(initialization_timeout=timeout_s)
        _initialized = True
        return jax.process_count() > 1
    return False


def shutdown() -> None:
    """Disconnect from the other processes (no-op when not initialized)."""
    global _initialized
    if _initialized:
        jax.distributed.shutdown()
        _initialized = False


def is_coordinator() -> bool:
    """True on process 0, the one that logs and writes run-level files."""
    return jax.process_index() == 0


def log0(msg: str, *args: Any, file=None) -> None:
    """Print (flushed) on process 0 only; other processes stay quiet. %-style args like logging."""
    if is_coordinator():
        print(msg % args if args else msg, file=file or sys.stdout, flush=True)


class Process0Filter(logging.Filter):
    """A logging filter that drops records on processes other than 0."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D401 - logging API
        """Keep the record only on process 0."""
        return is_coordinator()


def get_logger(name: str = "pilotrl_jax", level: int = logging.INFO) -> logging.Logger:
    """A logger that writes `[p<index>] message` to stderr on process 0 only."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, Process0Filter) for f in logger.filters):
        logger.addFilter(Process0Filter())
    if not logger.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter(f"[p{jax.process_index()}] %(asctime)s %(message)s"))
        logger.addHandler(h)
    logger.setLevel(level)
    return logger


def sync(name: str) -> None:
    """Barrier: wait until every process reaches `name` (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------- global batches


def _leading_sharding(mesh, ndim: int, rows: int):
    from pilotrl_jax import sharding as sh

    return sh.batch_sharding(mesh, ndim, rows)


def process_rows(mesh, global_rows: int, process_index: Optional[int] = None) -> slice:
    """The rows [start, stop) of a batch-sharded global array that this process's devices hold.

    This host must produce exactly these rows (e.g. run those rollouts) for `global_batch`.
    Rows are contiguous per host when the mesh's batch axes follow jax.devices() order
    (as `sharding.make_mesh` builds it); a mesh where the batch axes do not span hosts gives every
    host all rows."""
    pidx = jax.process_index() if process_index is None else process_index
    s = _leading_sharding(mesh, 1, global_rows)
    starts, stops = [], []
    for dev, idx in s.devices_indices_map((global_rows,)).items():
        if dev.process_index != pidx:
            continue
        sl = idx[0]
        starts.append(sl.start or 0)
        stops.append(global_rows if sl.stop is None else sl.stop)
    if not starts:
        raise ValueError(f"process {pidx} owns no device of the mesh; build the mesh from jax.devices()")
    start, stop = min(starts), max(stops)
    covered = sorted(set(zip(starts, stops)))
    total = sum(b - a for a, b in covered)
    if total != stop - start and not all(a == start and b == stop for a, b in covered):
        raise ValueError(f"process {pidx} holds non-contiguous rows {covered} of the batch; build the mesh with "
                         "sharding.make_mesh(shape, jax.devices()) so each host's rows are contiguous")
    return slice(start, stop)


def global_batch(local: Any, mesh, global_rows: Optional[int] = None) -> Any:
    """Global jax.Arrays (leading axis sharded over the batch axes) from this host's rows of each leaf.

    `local` is a pytree of NumPy arrays holding this process's rows (`process_rows`); every
    process calls this with its own rows in the same order. `global_rows` defaults to
    rows-per-process x process count."""
    leaves = jax.tree.leaves(local)
    if not leaves:
        return local
    n_local = int(np.shape(leaves[0])[0])
    for x in leaves:
        if np.ndim(x) == 0 or np.shape(x)[0] != n_local:
            raise ValueError(f"global_batch: every leaf needs the same leading (row) dim {n_local}; got "
                             f"shape {np.shape(x)}")
    if global_rows is None:
        global_rows = n_local * jax.process_count()
    want = process_rows(mesh, global_rows)
    if want.stop - want.start != n_local:
        raise ValueError(f"process {jax.process_index()} passed {n_local} rows but holds rows {want.start}:{want.stop} "
                         f"of {global_rows}; produce exactly process_rows(mesh, {global_rows}) rows on each host")

    def one(x):
        x = np.asarray(x)
        s = _leading_sharding(mesh, x.ndim, global_rows)
        return jax.make_array_from_process_local_data(s, x, (global_rows,) + x.shape[1:])

    return jax.tree.map(one, local)


def to_host(tree: Any) -> Any:
    """Fully gather (possibly multi-host) arrays to NumPy on every process."""
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


# ----------------------------------------------------------------------------- rows owned by each host


def row_blocks(mesh, global_rows: int, process_index: Optional[int] = None) -> list[slice]:
    """The rows of a batch-sharded [global_rows, ...] array that a process's devices hold, as sorted,
    merged, disjoint slices (one slice when the mesh keeps each host's rows contiguous)."""
    pidx = jax.process_index() if process_index is None else process_index
    s = _leading_sharding(mesh, 1, global_rows)
    spans = set()
    for dev, idx in s.devices_indices_map((global_rows,)).items():
        if dev.process_index == pidx:
            sl = idx[0]
            spans.add((sl.start or 0, global_rows if sl.stop is None else sl.stop))
    if not spans:
        raise ValueError(f"process {pidx} owns no device of the mesh; build the mesh from jax.devices()")
    merged: list[list[int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [slice(a, b) for a, b in merged]


def rows_are_partitioned(mesh, global_rows: int) -> bool:
    """True when every row of a batch-sharded array lives on exactly one process (no row on two hosts)."""
    count = np.zeros(global_rows, np.int32)
    for p in range(jax.process_count()):
        for sl in row_blocks(mesh, global_rows, p):
            count[sl] += 1
    return bool((count == 1).all())


def global_batch_from_blocks(local: Any, mesh, global_rows: int, blocks: Sequence[slice]) -> Any:
    """Global jax.Arrays from this host's rows, given as the rows of `blocks` (`row_blocks`) concatenated.

    Like `global_batch`, but a host's rows may be several blocks (topology-ordered meshes)."""
    blocks = list(blocks)
    n_local = sum(b.stop - b.start for b in blocks)
    offsets, at = [], 0
    for b in blocks:
        offsets.append(at)
        at += b.stop - b.start
    for x in jax.tree.leaves(local):
        if np.ndim(x) == 0 or np.shape(x)[0] != n_local:
            raise ValueError(f"global_batch_from_blocks: every leaf needs {n_local} rows (the blocks "
                             f"{[(b.start, b.stop) for b in blocks]}); got shape {np.shape(x)}")

    def one(x):
        x = np.asarray(x)
        shape = (global_rows,) + x.shape[1:]

        def cb(index):
            rows = index[0]
            a = rows.start or 0
            b = global_rows if rows.stop is None else rows.stop
            for blk, off in zip(blocks, offsets):
                if blk.start <= a and b <= blk.stop:
                    return x[(slice(off + a - blk.start, off + b - blk.start),) + tuple(index[1:])]
            raise ValueError(f"rows {a}:{b} are not among this host's blocks {blocks}")

        return jax.make_array_from_callback(shape, _leading_sharding(mesh, x.ndim, global_rows), cb)

    return jax.tree.map(one, local)


def global_from_full(full: Any, mesh) -> Any:
    """Global jax.Arrays (leading axis over the batch axes) when every host holds the whole batch."""
    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, _leading_sharding(mesh, x.ndim, x.shape[0]), lambda i: x[i])

    return jax.tree.map(one, full)


# ----------------------------------------------------------------------------- small host collectives


def allgather_ints(values: Sequence[int]) -> np.ndarray:
    """[process_count, len(values)] int array of every process's `values` (same length everywhere)."""
    v = np.asarray(list(values), np.int32).reshape(-1)
    if jax.process_count() == 1:
        return v[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(v)).reshape(jax.process_count(), -1)


def max_over_hosts(value: int) -> int:
    """The largest of every process's int `value` (e.g. the longest sequence, to agree on a bucket)."""
    return int(allgather_ints([int(value)]).max())


def any_host(flag: bool) -> bool:
    """True on every process when `flag` is true on at least one (e.g. a SIGTERM seen by one host)."""
    return bool(allgather_ints([int(bool(flag))]).any())


def allgather_json(obj: Any) -> list:
    """Every process's JSON-serializable `obj`, in process order (a list of one object with one process)."""
    if jax.process_count() == 1:
        return [obj]
    import json

    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = allgather_ints([data.size])[:, 0]
    buf = np.zeros(max(int(sizes.max()), 1), np.uint8)
    buf[:data.size] = data
    got = np.asarray(multihost_utils.process_allgather(buf)).reshape(jax.process_count(), -1)
    return [json.loads(bytes(got[p, :int(sizes[p])]).decode()) for p in range(jax.process_count())]


# ----------------------------------------------------------------------------- host-local copies


def process_devices(process_index: Optional[int] = None) -> list:
    """The devices of one process (default: this one), in jax.devices() order."""
    pidx = jax.process_index() if process_index is None else process_index
    return [d for d in jax.devices() if d.process_index == pidx]


def host_local_copies(tree: Any, local_meshes: Sequence[Any], specs: Any) -> Any:
    """Give every host its own full copy of a (globally sharded) tree, sharded over its own devices.

    `local_meshes[p]` is process p's mesh (same axis names and shape on every process, over
    `process_devices(p)`); `specs` is a matching tree of PartitionSpecs over those axes. One
    collective resharding moves the data (every process must call this); the result lives on
    `local_meshes[jax.process_index()]` and is fully addressable, so host-local jitted code (e.g.
    a sampler that each host drives on its own schedule) can use it."""
    from jax.sharding import Mesh, NamedSharding

    meshes = list(local_meshes)
    if len(meshes) != jax.process_count():
        raise ValueError(f"host_local_copies: {len(meshes)} local meshes for {jax.process_count()} processes; "
                         "pass one mesh per process")
    shapes = {tuple(m.devices.shape) for m in meshes}
    names = {tuple(m.axis_names) for m in meshes}
    if len(shapes) != 1 or len(names) != 1:
        raise ValueError(f"host_local_copies: local meshes differ in shape {sorted(shapes)} or axes {sorted(names)}; "
                         "every host needs the same local mesh shape")
    axes = meshes[0].axis_names
    hosts = Mesh(np.stack([m.devices for m in meshes]), ("_hosts",) + tuple(axes))
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
    staged = jax.device_put(tree, jax.tree.map(lambda s: NamedSharding(hosts, s), specs, is_leaf=is_spec))
    mine = meshes[jax.process_index()]

    def local(x, spec):
        return jax.make_array_from_single_device_arrays(x.shape, NamedSharding(mine, spec),
                                                        [s.data for s in x.addressable_shards])

    return jax.tree.map(local, staged, specs, is_leaf=lambda x: isinstance(x, jax.Array))
