"""Per-device memory plan of a run's RL stages, from the config alone, before anything is allocated.

What one device holds while an RL stage runs (the trainer keeps its rollout engine, with its KV cache
and params copy, for the whole stage, so they sit beside the PPO update too):

    resident = train state: params + 2 Adam moments in model.param_dtype (twice with a critic)
             + KL reference params (kl_coef > 0)
             + the sampler's params copy (scanned layers: a per-layer copy; several hosts: a host copy
               in the compute dtype over the host's devices)
             + the rollout engine's KV cache (its rows x agent.token_budget slots)
             + the evaluation engine's KV cache when eval.every > 0 (it runs beside the rollout engine)
    rollout  = resident + one prefill call: attention scores and probabilities of rows x chunk x window,
               and a gathered sub-cache when the rows are not a power of two
    update   = resident + gradients and optimizer temporaries (3 x the params shard) + the PPO batch
               and its shuffled copy + one micro-batch's activations (what remat keeps of every layer,
               one layer's recompute with its causal attention probabilities, the LM head's logits)
    eval     = params + params copy + the stage-end evaluation engine's KV cache and prefill call
Every term is arithmetic on the model's sizes and the trainer's shapes (`train.shapes`). It is an
estimate, set against XLA's compiled memory (`python -m pilotrl_jax.aot`, libtpu 0.0.42.1):
configs/tpu_llama31_8b.py on v5p-32 peaks at 50.0 GiB per chip in the PPO step at 16K tokens
(estimate 47.0) and 29.5 GiB in the rollout's prefill (estimate 31.3); one v5p chip, LLaMA-3.1-8B
layer sizes with 2 layers: a prefill of 8 rows x 256 x 16K slots 4.2 GiB of temporaries (estimate 6.0),
the PPO step on one 16K-token row 33 GiB (estimate 55: it errs high on one chip), and `dots_no_batch`
keeps 155 KB per token and layer (estimate 180). SFT stages are not planned (their batch is
sft.batch_size rows).

Behaviour of `check` (called by `trainer.run_pipeline` before any params exist):
- budget per device: config.rollout.memory_budget_gib when > 0; 0 (default) = 90% of what the device
  reports (`memory_stats()['bytes_limit']`), else of its kind's size in DEVICE_MEMORY; < 0 = no plan.
  Devices that report neither (CPU) skip the plan with one log line, so CPU runs are unchanged.
- rollout.max_batch = 0 (auto): all of a host's episodes of a step when they fit, else the largest
  (data x fsdp) x power-of-two rows that fit; that value is written to config.rollout.max_batch and logged.
- any other setting is taken as given: an rl.num_micro_batches, rollout.max_batch or evaluation size
  that does not fit raises MemoryPlanError naming each key, what it costs, and the value that fits
  (or, when nothing fits, how many devices of this size the stage needs).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from pilotrl_jax.train.memory_terms import (  # noqa: F401 (DEVICE_MEMORY, GIB: this module's API too)
    BUDGET_FRACTION,
    DEVICE_MEMORY,
    Devices,
    Estimate,
    GIB,
    Geometry,
    LOGITS_CHUNK_HINT,
    MemoryPlanError,
    describe_kv,
    plural,
    estimate,
    gib,
    kv_cache_bytes,
    update_terms,
)


# ----------------------------------------------------------------------------- from a config


def _plain(x):
    return x.to_dict() if hasattr(x, "to_dict") else dict(x)


def mesh_shapes(cfg, devices: Devices) -> tuple[tuple, tuple]:
    """(training mesh, sampler mesh) sizes as (data, fsdp, tensor): config.mesh over every device
    (one device: no mesh), the sampler's over one host's devices on several hosts (`multihost`)."""
    from pilotrl_jax import sharding as sh
    from pilotrl_jax.train.multihost import sampler_mesh_shape

    mesh = (1, 1, 1) if devices.count == 1 else tuple(sh.mesh_sizes(_plain(cfg.mesh), devices.count))
    if devices.hosts == 1:
        return mesh, mesh
    s = sampler_mesh_shape(_plain(cfg.mesh), devices.local)
    return mesh, (s["data"], s["fsdp"], s["tensor"])


def geometry(cfg, st, devices: Devices, sampler_rows: Optional[int] = None,
             micro_rows: Optional[int] = None) -> Geometry:
    """A stage's Geometry on `devices` from the trainer's own shape functions (`train.shapes`)."""
    from pilotrl_jax.train import shapes

    mesh, smesh = mesh_shapes(cfg, devices)
    pc = st.ppo
    rows = shapes.ppo_rows(st)
    every = int(cfg.eval.get("every", 0) or 0)
    return Geometry(
        mesh=mesh, sampler_mesh=smesh, hosts=devices.hosts, rows=rows,
        micro_rows=max(1, rows // (pc.num_mini_batches * pc.num_micro_batches)) if micro_rows is None else micro_rows,
        seq_len=shapes.longest_seq_len(cfg),
        sampler_rows=shapes.rollout_rows(cfg, st, devices.hosts) if sampler_rows is None else sampler_rows,
        eval_rows=shapes.eval_rows(cfg, devices.hosts),
        eval_rows_during=shapes.eval_rows(cfg, devices.hosts, group_size=1) if every > 0 else 0,
        window=int(cfg.agent.token_budget), prefill_chunk=shapes.sampler_shape(cfg, "rollout", 1).prefill_chunk,
        critic=bool(pc.use_critic), ref=bool(pc.needs_ref), logits_chunk=int(pc.logits_chunk_size or 0),
        batch_keys=6 + int(pc.kl_in_loss) + 2 * int(pc.use_critic))


def budget(cfg, devices: Devices) -> tuple[int, str]:
    """(bytes per device the plan may use, where that number comes from); 0 = no plan."""
    key = float(cfg.rollout.get("memory_budget_gib", 0.0) or 0.0)
    if key < 0:
        return 0, f"config.rollout.memory_budget_gib={key:g} < 0 turns the plan off"
    if key > 0:
        return int(key * GIB), f"config.rollout.memory_budget_gib={key:g}"
    if devices.memory > 0:
        return int(BUDGET_FRACTION * devices.memory), (f"{BUDGET_FRACTION:.0%} of {gib(devices.memory)} "
                                                       f"({devices.source or devices.kind})")
    return 0, (f"{devices.kind or 'these'} devices report no memory limit; set config.rollout.memory_budget_gib "
               "(GiB per device) to plan against a budget")


def _micro_options(g: Geometry, st) -> list[tuple[int, int]]:
    """(rl.num_micro_batches, micro rows) the PPO step accepts, fewest micro-batches first."""
    d, f, _ = g.mesh
    mini_rows = g.rows // st.ppo.num_mini_batches
    out = []
    for m in range(1, mini_rows + 1):
        if mini_rows % m == 0 and (mini_rows // m) % (d * f) == 0:
            out.append((m, mini_rows // m))
    return out


def _row_options(g: Geometry, host_rows: int) -> list[int]:
    """Rollout engine rows to try: (data x fsdp) x powers of two below the host's rows, then all of them."""
    sd, sf, _ = g.sampler_mesh
    out, r = [], sd * sf
    while r < host_rows:
        out.append(r)
        r *= 2
    return out + [host_rows]


@dataclasses.dataclass
class StagePlan:
    """The outcome of planning one RL stage."""

    stage: str
    estimate: Estimate
    geometry: Geometry
    budget: int
    max_batch: Optional[int] = None  # the rollout engine's rows to use when rollout.max_batch = 0 caps them
    fixes: list = dataclasses.field(default_factory=list)  # key changes the stage needs (empty: it fits)


def _fits(mc, g: Geometry, limit: int) -> bool:
    return estimate(mc, g).train_peak <= limit




def _smallest_micro(mc, g: Geometry, st, limit: int) -> Optional[tuple[int, int]]:
    """The fewest rl.num_micro_batches (and its micro rows) whose update fits beside `g`'s rollout rows."""
    return next(((m, r) for m, r in _micro_options(g, st) if _fits(mc, dataclasses.replace(g, micro_rows=r), limit)),
                None)


_ACTIVATIONS = ("activations kept", "one layer's recompute", "LM-head logits")


def _devices_needed(cfg, st, mc, devices: Devices, limit: int) -> str:
    """How many devices of this size the smallest settings would need, as a sentence."""
    from pilotrl_jax.train import shapes

    n = devices.count
    for _ in range(6):
        n *= 2
        hosts = max(1, n // devices.local) if devices.hosts > 1 else 1
        try:
            g = geometry(cfg, st, Devices(n, hosts, devices.memory, devices.kind, devices.source))
        except ValueError:  # config.mesh cannot take n devices
            continue
        g = dataclasses.replace(g, micro_rows=min([g.micro_rows] + [r for _, r in _micro_options(g, st)]),
                                sampler_rows=min(g.sampler_rows, _row_options(g, shapes.host_rows(st, hosts))[0]))
        if _fits(mc, g, limit):
            return f"{n} devices of this size would fit (config.mesh shards the weights over fsdp x tensor)"
        d, f, _ = g.mesh
        per_row = [t for t in update_terms(mc, dataclasses.replace(g, micro_rows=d * f))
                   if t.name.startswith(_ACTIVATIONS)]
        if sum(t.bytes for t in per_row) > limit:
            return (f"more devices alone do not help: one row of a micro-batch per device already needs "
                    f"{gib(sum(t.bytes for t in per_row))} of activations")
    return f"not even {n} devices of this size would fit"


def plan_stage(cfg, st, mc, devices: Devices, limit: int) -> StagePlan:
    """Plan one RL stage against `limit` bytes per device; see the module docstring for the behaviour."""
    from pilotrl_jax.train import shapes

    g0 = geometry(cfg, st, devices)
    out = StagePlan(st.name, estimate(mc, g0), g0, limit)
    host_rows = shapes.host_rows(st, devices.hosts)
    cap = int(cfg.rollout.get("max_batch", 0) or 0)
    fewest = dataclasses.replace(g0, sampler_rows=min(_row_options(g0, host_rows)[0], g0.sampler_rows))
    g_min = dataclasses.replace(fewest, micro_rows=min([g0.micro_rows] + [r for _, r in _micro_options(g0, st)]))
    if not _fits(mc, g_min, limit):
        out.fixes.append(_nothing_fits(cfg, st, mc, devices, limit, g_min))
        g = g_min
    else:
        g = g0
        if not _fits(mc, fewest, limit):  # the micro-batch alone is too big
            m, rows = _smallest_micro(mc, fewest, st, limit)
            g = dataclasses.replace(g0, micro_rows=rows)
            out.fixes.append(
                f"config.rl.num_micro_batches={st.ppo.num_micro_batches} makes micro-batches of "
                f"{plural(g0.micro_rows, 'row')} x {g0.seq_len} tokens: the update phase needs "
                f"{gib(estimate(mc, fewest).total('update'))} per device even with "
                f"{plural(fewest.sampler_rows, 'rollout row')}; set config.rl.num_micro_batches={m} "
                f"({plural(rows, 'row')} per micro-batch: "
                f"{gib(estimate(mc, dataclasses.replace(fewest, micro_rows=rows)).total('update'))}; more "
                "micro-batches leave more memory for rollout rows)")
        options = [r for r in _row_options(g, host_rows) if _fits(mc, dataclasses.replace(g, sampler_rows=r), limit)]
        if cap and not _fits(mc, g, limit):
            kv = kv_cache_bytes(mc, g.sampler_rows, g.window, g.sampler_mesh)
            out.fixes.append(
                f"config.rollout.max_batch={cap} needs a KV cache of {gib(kv)} per device "
                f"({describe_kv(mc, g.sampler_rows, g.window, g.sampler_mesh)}), "
                f"{gib(estimate(mc, g).train_peak)} in all: set config.rollout.max_batch <= {options[-1]} "
                "(or 0 to derive it)")
        elif not cap and not _fits(mc, g, limit):
            out.max_batch = options[-1]
            g = dataclasses.replace(g, sampler_rows=options[-1])
    if estimate(mc, g).total("eval") > limit:
        ok = [r for r in range(1, g.eval_rows + 1)
              if estimate(mc, dataclasses.replace(g, eval_rows=r)).total("eval") <= limit]
        need = gib(estimate(mc, g).total("eval"))
        out.fixes.append(
            f"the stage-end evaluation samples {g.eval_rows} episodes at once (min({shapes.eval_max_rows()}, "
            f"eval.num_tasks x eval.group_size per host)) and needs {need} per device: set config.eval.num_tasks x "
            f"config.eval.group_size <= {ok[-1]}" if ok else
            f"the stage-end evaluation needs {need} per device and does not fit even one episode at once")
    if not out.fixes:
        out.geometry, out.estimate = g, estimate(mc, g)
    return out


def _nothing_fits(cfg, st, mc, devices: Devices, limit: int, g_min: Geometry) -> str:
    """The fix line when even the smallest micro-batch and rollout rows do not fit."""
    est = estimate(mc, g_min)
    changes = []  # (config text, model config, geometry)
    if mc.remat_policy != "full":
        changes.append(("config.model.remat_policy='full'", mc.replace(remat_policy="full"), g_min))
    if not g_min.logits_chunk:
        changes.append((f"config.rl.logits_chunk_size={LOGITS_CHUNK_HINT}", mc,
                        dataclasses.replace(g_min, logits_chunk=LOGITS_CHUNK_HINT)))
    if mc.param_dtype != "bfloat16":
        changes.append(("config.model.param_dtype='bfloat16' (bfloat16 Adam moments too)",
                        mc.replace(param_dtype="bfloat16"), g_min))
    if len(changes) > 1:
        changes.append(("all of these", mc.replace(remat_policy="full", param_dtype="bfloat16"),
                        dataclasses.replace(g_min, logits_chunk=g_min.logits_chunk or LOGITS_CHUNK_HINT)))
    helps = []
    for text, mc_alt, g_alt in changes:
        peak = estimate(mc_alt, g_alt).train_peak
        if peak > limit:
            helps.append(f"{text}: {gib(peak)}")
            continue
        big = dataclasses.replace(g_alt, micro_rows=max([g_alt.micro_rows] + [r for _, r in _micro_options(g_alt, st)]))
        m, rows = _smallest_micro(mc_alt, big, st, limit) or (0, g_alt.micro_rows)
        helps.append(f"{text}: fits ({gib(peak)}), with config.rl.num_micro_batches >= {m}" if m else
                     f"{text}: fits ({gib(peak)})")
    return (f"even with {plural(g_min.micro_rows, 'row')} per micro-batch (config.rl.num_micro_batches) and "
            f"{plural(g_min.sampler_rows, 'rollout row')} (config.rollout.max_batch) the "
            f"{_train_peak_phase(est)} phase needs {gib(est.train_peak)} per device on "
            f"{plural(devices.count, 'device')}; " + _devices_needed(cfg, st, mc, devices, limit)
            + ("; at those settings " + "; ".join(helps) if helps else ""))


def _train_peak_phase(est: Estimate) -> str:
    return max(("rollout", "update"), key=est.total)


# ----------------------------------------------------------------------------- the start-up check


def local_devices() -> Devices:
    """This process's view of the run's devices: count, hosts, and per-device memory (reported or from the table)."""
    import jax

    dev = jax.devices()[0]
    kind = str(getattr(dev, "device_kind", "") or dev.platform)
    memory, source = 0, ""
    try:
        stats = dev.memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory stats raise assorted errors
        stats = {}
    if stats.get("bytes_limit"):
        memory, source = int(stats["bytes_limit"]), f"{kind} memory_stats()['bytes_limit']"
    elif kind in DEVICE_MEMORY:
        memory, source = DEVICE_MEMORY[kind], f"{kind}, memory_plan.DEVICE_MEMORY"
    return Devices(count=jax.device_count(), hosts=jax.process_count(), memory=memory, kind=kind, source=source)


def rl_stages(cfg) -> list:
    """The resolved settings of the pipeline's RL stages, in order."""
    from pilotrl_jax.train import config as C

    return [C.resolve_stage(cfg, n) for n in C.pipeline(cfg) if cfg.stages[n].kind == "rl"]


def plan(cfg, devices: Devices, model_cfg=None) -> tuple[list, int, str]:
    """(StagePlans of the RL stages, budget bytes, budget source); no plans when there is no budget."""
    from pilotrl_jax.train import shapes

    limit, source = budget(cfg, devices)
    stages = rl_stages(cfg)
    if not limit or not stages:
        return [], limit, source
    mc = model_cfg if model_cfg is not None else shapes.model_config(cfg)
    return [plan_stage(cfg, st, mc, devices, limit) for st in stages], limit, source


def check(cfg, devices: Optional[Devices] = None, model_cfg=None, log: Callable[[str], None] = print) -> list:
    """Plan every RL stage before anything is allocated: write a derived rollout.max_batch into `cfg`
    (when it is 0 and all rows do not fit), or raise MemoryPlanError naming the keys to change."""
    devices = devices or local_devices()
    plans, limit, source = plan(cfg, devices, model_cfg)
    where = f"{devices.count} x {devices.kind or 'device'}"
    if not limit:
        log(f"memory plan: skipped on {where} ({source})")
        return []
    bad = [p for p in plans if p.fixes]
    if bad:
        lines = [f"memory plan: the config does not fit {where} (budget {gib(limit)} per device: {source})."]
        groups: dict = {}  # stages with the same table and fixes are reported once
        for p in bad:
            groups.setdefault((p.estimate.table(), tuple(p.fixes)), []).append(p)
        for (table, fixes), same in groups.items():
            names = ", ".join(repr(p.stage) for p in same)
            lines += [f"stage {names}, {same[0].estimate.peak_phase} phase as configured (estimate):", table]
            lines += [f"  - {fix}" for fix in fixes]
        lines.append("(an estimate, see pilotrl_jax/train/memory_plan.py; config.rollout.memory_budget_gib sets the "
                     "budget per device, -1 turns the check off)")
        raise MemoryPlanError("\n".join(lines))
    derived = [p.max_batch for p in plans if p.max_batch]
    if derived:
        cfg.rollout.max_batch = min(derived)
        log(f"memory plan: rollout.max_batch=0 -> {cfg.rollout.max_batch} rollout rows per host (all of a step's "
            f"rows do not fit {gib(limit)} per device)")
    for p in plans:
        e = p.estimate
        log(f"memory plan [{p.stage}]: {gib(e.peak)} of {gib(limit)} per device at its {e.peak_phase} phase "
            f"({where}; {p.geometry.sampler_rows} rollout rows, {p.geometry.micro_rows} rows per micro-batch, "
            f"{p.geometry.seq_len} tokens)")
    return plans
