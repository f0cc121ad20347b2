"""The trainer on several hosts (a TPU pod, or several CPU processes in tests): who rolls out what.

One process per host runs the same trainer. What changes with more than one process:
- Rollouts: every host runs only its share of a step's tasks (whole GRPO groups: a task's G
  episodes stay on one host, so group advantages need no cross-host data) with its own sampler.
  The sampler is host-local: each host holds a full copy of the policy params (in the compute
  dtype) sharded over its own chips (`sampler_params`; one collective resharding per step) and
  drives it on its own schedule, since env steps make every host's generate calls differ.
- The training batch: `RowPlan` says which rows each host builds. When the mesh gives every row to
  exactly one host in whole groups ("sharded"), a host runs exactly the groups of its rows and the
  global batch is assembled from per-host rows (`distributed.global_batch_from_blocks`). Otherwise
  (rows replicated over hosts, e.g. tensor parallelism across hosts, or topology-ordered meshes whose
  host blocks split a group) tasks are split evenly by process and the rows are all-gathered
  ("gathered": a host all-gather of the token arrays, small next to a PPO step). The padded length
  is the bucket of the longest episode over all hosts, so every host compiles the same shapes.
- Metrics: per-host rollout metrics are reduced over hosts (`reduce_metrics`) before process 0
  writes them; evaluation splits its tasks over hosts and gathers the per-episode records.
With one process every function here is the identity (the single-host trainer is unchanged).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import jax
import numpy as np

from pilotrl_jax import distributed as dist
from pilotrl_jax import sharding as sh


def is_multihost() -> bool:
    """True when several processes (hosts) share the run."""
    return jax.process_count() > 1


def host_seed(seed: int, process_index: Optional[int] = None) -> int:
    """A rollout seed for this host: `seed` itself on process 0, an independent one on the others."""
    pidx = jax.process_index() if process_index is None else int(process_index)
    if pidx == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 7919, pidx]).generate_state(1)[0])


def split_evenly(n: int, parts: int, index: int) -> range:
    """Indices [0, n) of part `index` when n items are cut into `parts` contiguous, near-equal parts."""
    if parts < 1 or not 0 <= index < parts:
        raise ValueError(f"split_evenly: index={index} parts={parts}; expected 0 <= index < parts")
    base, extra = divmod(int(n), int(parts))
    start = index * base + min(index, extra)
    return range(start, start + base + (1 if index < extra else 0))


# ----------------------------------------------------------------------------- the host-local sampler


def sampler_mesh_shape(mesh_cfg: Optional[dict], n_local: int) -> dict:
    """The sampler's per-host (data, fsdp, tensor) shape: config.mesh's tensor size when it divides the
    host's devices (else 1), the rest on fsdp."""
    t = int((mesh_cfg or {}).get("tensor", 1))
    if t < 1 or n_local % t:
        t = 1
    return {"data": 1, "fsdp": n_local // t, "tensor": t}


@functools.lru_cache(maxsize=8)
def _local_meshes(mesh_key: tuple) -> tuple:
    shape = dict(mesh_key)
    out = []
    for p in range(jax.process_count()):
        devs = dist.process_devices(p)
        out.append(sh.make_mesh(sampler_mesh_shape(shape, len(devs)), devs))
    return tuple(out)


def local_meshes(ctx) -> tuple:
    """Every process's sampler mesh (one per host, over that host's devices), in process order."""
    mesh_cfg = ctx.cfg.mesh.to_dict() if hasattr(ctx.cfg.mesh, "to_dict") else dict(ctx.cfg.mesh)
    return _local_meshes(tuple(sorted(mesh_cfg.items())))


def sampler_mesh(ctx):
    """The mesh the sampler engines use: the run's mesh on one host, this host's devices on several."""
    if not is_multihost():
        return ctx.mesh
    return local_meshes(ctx)[jax.process_index()]


def _is_local(params, mesh) -> bool:
    leaves = jax.tree.leaves(params)
    return all(isinstance(x, jax.Array) and x.is_fully_addressable and getattr(x.sharding, "mesh", None) == mesh
               for x in leaves)


def sampler_params(ctx, params):
    """Params for a sampler engine: `params` on one host; on several, this host's full copy sharded
    over its own devices, in the compute dtype (every process must call this at the same point: it
    is a collective)."""
    if not is_multihost():
        return params
    from pilotrl_jax.models import llama

    meshes = local_meshes(ctx)
    mine = meshes[jax.process_index()]
    if _is_local(params, mine):
        return params
    params = compute_dtype_copy(params, llama.dtype_of(ctx.model_cfg.dtype))
    specs = jax.tree.map(lambda s: s.spec, llama.param_shardings(ctx.model_cfg, mine))
    return dist.host_local_copies(params, meshes, specs)


def compute_dtype_copy(params, dtype):
    """Floating params cast to `dtype`, sharded as they are (the model casts every weight to its compute
    dtype before use, so sampling from the copy gives the same tokens and log-probs at half the bytes
    when params are float32 and compute is bfloat16). Params already in `dtype` come back as they are."""
    import jax.numpy as jnp

    leaves = jax.tree.leaves(params)
    if all(x.dtype == dtype or not jnp.issubdtype(x.dtype, jnp.floating) for x in leaves):
        return params
    cast = lambda t: jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, t)
    return jax.jit(cast, out_shardings=jax.tree.map(lambda x: x.sharding, params))(params)


# ----------------------------------------------------------------------------- rows of the training batch


@dataclasses.dataclass(frozen=True)
class RowPlan:
    """Which GRPO groups (task indices of a step) this host rolls out, and how the batch is assembled.

    mode "sharded": `groups` are exactly the groups of this host's rows `blocks` (in row order);
    mode "gathered": `groups` are this host's even share, rows are all-gathered afterwards."""

    rows: int
    group_size: int
    mode: str
    groups: tuple
    blocks: tuple = ()
    reason: str = ""

    @property
    def local_rows(self) -> int:
        """Episodes this host runs per step."""
        return len(self.groups) * self.group_size


def plan_rows(mesh, tasks_per_step: int, group_size: int) -> RowPlan:
    """The RowPlan of a stage for this process (single process: every group, in order)."""
    n, G = int(tasks_per_step), int(group_size)
    rows = n * G
    P = jax.process_count()
    if P == 1:
        return RowPlan(rows, G, "single", tuple(range(n)))
    if n < P:
        raise ValueError(f"rollout.tasks_per_step={n} is smaller than the number of hosts ({P}); every host needs "
                         f"at least one task: set tasks_per_step to a multiple of {P}")
    reason = ""
    if not dist.rows_are_partitioned(mesh, rows):
        reason = "the mesh places some batch rows on several hosts"
    else:  # decided from every host's blocks, so all processes take the same branch
        bad = [(b.start, b.stop) for p in range(P) for b in dist.row_blocks(mesh, rows, p)
               if b.start % G or b.stop % G]
        if bad:
            reason = f"host row blocks {bad} cut groups of {G}"
        else:
            blocks = dist.row_blocks(mesh, rows)
            groups = tuple(g for b in blocks for g in range(b.start // G, b.stop // G))
            return RowPlan(rows, G, "sharded", groups, tuple(blocks))
    groups = tuple(split_evenly(n, P, jax.process_index()))
    return RowPlan(rows, G, "gathered", groups, (), reason)


def agreed_length(longest_local: int, bucket: Any = "pow2") -> int:
    """The padded batch length every host uses: the bucket of the longest episode over all hosts."""
    from pilotrl_jax.rollout.batch import bucket_length

    return bucket_length(dist.max_over_hosts(int(longest_local)), bucket)


def global_training_batch(local: dict, plan: RowPlan, mesh) -> dict:
    """The global PPO input (jax.Arrays over the mesh) from this host's rows of it."""
    if plan.mode == "sharded":
        return dist.global_batch_from_blocks(local, mesh, plan.rows, plan.blocks)
    if plan.mode != "gathered":
        raise ValueError(f"RowPlan.mode={plan.mode!r}; global_training_batch needs 'sharded' or 'gathered'")
    from jax.experimental import multihost_utils

    counts = dist.allgather_ints([plan.local_rows])[:, 0]
    most = int(counts.max())
    full = {}
    for k, v in local.items():
        v = np.asarray(v)
        pad = np.zeros((most - v.shape[0],) + v.shape[1:], v.dtype)
        got = np.asarray(multihost_utils.process_allgather(np.concatenate([v, pad])))
        full[k] = np.concatenate([got[p, :int(counts[p])] for p in range(len(counts))])
    if full[next(iter(full))].shape[0] != plan.rows:
        raise ValueError(f"gathered {full[next(iter(full))].shape[0]} rows, expected {plan.rows}")
    return dist.global_from_full(full, mesh)


# ----------------------------------------------------------------------------- metrics over hosts

_SUM_PREFIXES = ("status/", "judge/")
_SUM_KEYS = {"reward/judged", "reward/judge_failures", "rollout/policy_tokens", "rollout/episodes_per_s"}
_MAX_PREFIXES = ("time/",)
_MAX_KEYS = {"rollout/wall_s", "rollout/generate_s"}


def _reduction(key: str) -> str:
    if key in _MAX_KEYS or key.startswith(_MAX_PREFIXES) or key.endswith("_max_s"):
        return "max"
    if key.endswith("_mean_s"):
        return "mean"
    if key in _SUM_KEYS or key.startswith(_SUM_PREFIXES):
        return "sum"
    return "mean"


def reduce_metrics(rows: Sequence[dict], weights: Sequence[float], key_weights: Optional[Sequence[dict]] = None) -> dict:
    """One metrics dict from every host's: counts summed (status/*, judge/*, judged), times maxed,
    everything else a mean weighted by the host's episodes (or by `key_weights[h][key]`)."""
    rows = list(rows)
    if len(rows) != len(weights):
        raise ValueError(f"reduce_metrics: {len(rows)} rows but {len(weights)} weights; one weight per host")
    if len(rows) == 1:
        return dict(rows[0])
    key_weights = list(key_weights or [{} for _ in rows])
    out: dict = {}
    keys = [k for r in rows for k in r]
    for k in dict.fromkeys(keys):
        vals = [(r[k], float(kw.get(k, w))) for r, w, kw in zip(rows, weights, key_weights)
                if k in r and isinstance(r[k], (int, float)) and not isinstance(r[k], bool) and r[k] is not None]
        if not vals:
            out[k] = next(r[k] for r in rows if k in r)
            continue
        how = _reduction(k)
        if how == "sum":
            out[k] = sum(v for v, _ in vals)
        elif how == "max":
            out[k] = max(v for v, _ in vals)
        else:
            total = sum(w for _, w in vals)
            out[k] = (sum(v * w for v, w in vals) / total) if total > 0 else float(np.mean([v for v, _ in vals]))
    return out
