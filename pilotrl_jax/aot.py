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
`--attention xla,splash` compiles the PPO step and the forwards once per attention implementation
(`model.attention_impl`, resolved for the topology: `auto` is splash on TPU) and lists them side by side
with the attention's share of the model FLOPs; the sampler (KV-cache prefill and decode) keeps its own
attention. `--config.model.attention_impl=splash` (any `--config.KEY=VALUE`) overrides the config file.

Needs `pip install 'libtpu==0.0.42.*'` (the version jax[tpu]==0.10.2 pins; 0.0.42.1 tested) so JAX can compile for TPU without one.
Topologies: `v5p:2x2x4`-style names (as `jax.experimental.topologies` takes them) or slice names
such as `v5p-32`, `v4-16`, `v5litepod-16`, `v6e-8`.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
from typing import Optional, Sequence

from pilotrl_jax.aot_compile import (  # noqa: F401 (AOTError, topology_name, num_hosts: the CLI's API)
    AOTError,
    Row,
    abstract_array,
    abstract_params,
    abstract_train_state,
    compile_decode,
    compile_logprobs,
    compile_ppo_step,
    compile_prefill,
    compile_values,
    hbm_bytes,
    num_hosts,
    sampler_mesh,
    topology_devices,
    topology_mesh,
    topology_name,
    tree_bytes_per_chip,
)
from pilotrl_jax.train.memory_plan import GIB

# Config keys this check once had for settings the trainer decides elsewhere: refused by name.
_RETIRED_AOT_KEYS = {
    "prefill_chunk": "the trainer's sampler engines use SamplerEngine's own prefill_chunk",
    "decode_chunk": "the trainer's sampler engines use SamplerEngine's own decode_chunk",
}

# Peak dense bf16 FLOP/s per chip by device kind (for the ideal-time column).
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5": 459e12, "TPU v5p": 459e12,
              "TPU v6 lite": 918e12, "TPU v6e": 918e12}

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


def apply_overrides(cfg, args: Sequence[str]) -> None:
    """Apply `--config.a.b=value` arguments to `cfg` (value parsed as the existing key's type)."""
    for arg in args:
        key, eq, value = arg.partition("=")
        if not key.startswith("--config.") or not eq:
            raise AOTError(f"unknown argument {arg!r}; overrides look like --config.model.attention_impl=splash")
        *path, leaf = key[len("--config."):].split(".")
        node = cfg
        for k in path:
            node = node[k] if k in node else None
            if node is None:
                raise AOTError(f"{key}: config has no section {k!r}")
        if leaf not in node:
            raise AOTError(f"{key}: config has no key {leaf!r} (known: {sorted(node.keys())})")
        old = node[leaf]
        if isinstance(old, bool):
            node[leaf] = value.lower() in ("1", "true", "yes")
        elif isinstance(old, (int, float)):
            node[leaf] = type(old)(value)
        else:
            node[leaf] = value


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


# ----------------------------------------------------------------------------- driver


def kv_cache_bytes_per_chip(model_cfg, mesh, rows: int, window: int) -> int:
    """Per-chip bytes of a sampler engine's KV cache of `rows` rows (`sampling.engine.cache_structure`)."""
    from pilotrl_jax import sharding as sh
    from pilotrl_jax.models import llama
    from pilotrl_jax.sampling import engine

    cache = engine.cache_structure(engine.decode_config(model_cfg), rows, window, llama.dtype_of(model_cfg.dtype),
                                   lambda shape, d, axes: abstract_array(shape, d, sh.named_sharding(mesh, axes, shape)))
    return tree_bytes_per_chip(cache)


def paged_rows_per_host(cfg, topology: str, lengths: Sequence[int], page_size: int = 16, lookahead: int = 64,
                        stage: Optional[str] = None) -> dict:
    """Rows per host a paged sampler (`rollout.kv_cache='paged'`) holds in the HBM the report gives the dense
    rollout cache (`kv_cache_bytes_per_chip` at the rollout's rows and window), when episodes reach
    `lengths` tokens (a sample of the length mix; each row holds its tokens plus `lookahead` slots (a
    decode chunk allocated ahead), in pages of `page_size`; one trash page). Counts at every row's final
    length (live rows are shorter on average: an upper bound on the memory)."""
    from pilotrl_jax.sampling.paged import pages_for

    devices = topology_devices(topology)
    mc = model_config(cfg)
    hosts = num_hosts(devices)
    smesh = sampler_mesh(cfg, devices, topology)
    roll = sampler_shapes(cfg, stage, hosts, smesh.shape["data"] * smesh.shape["fsdp"])[0]
    dense = kv_cache_bytes_per_chip(mc, smesh, roll.rows, roll.window)
    per_token = dense / (roll.rows * roll.window)  # bytes per chip of one token slot (kv heads over the chips)
    pages = int(dense // (per_token * page_size)) - 1
    budget = int(cfg.agent.token_budget)
    held = [pages_for(min(int(n) + lookahead, budget), page_size) for n in lengths]
    mean_pages = sum(held) / len(held)
    rows = int(pages // mean_pages)
    return dict(topology=topology_name(topology), dense_rows=roll.rows, window=roll.window, kv_bytes_per_chip=dense,
                token_bytes_per_chip=per_token, pages=pages, page_size=page_size, mean_length=sum(lengths) / len(lengths),
                mean_pages=mean_pages, rows=rows, ratio=rows / roll.rows, hosts=hosts,
                sampler_mesh=dict(smesh.shape))


def run(cfg, topology: str, buckets: Optional[Sequence[int]] = None, parts: Sequence[str] = ("ppo", "ref", "sampler"),
        stage: Optional[str] = None, log=print, attention: Sequence[str] = ()) -> tuple[list, dict]:
    """Compile the config's functions for `topology` (the training-side ones once per `attention`
    implementation, default the config's); returns (rows, info) for `format_table`."""
    from pilotrl_jax.models.config import ATTENTION_IMPLS
    from pilotrl_jax.models import llama
    from pilotrl_jax.sampling import engine
    from pilotrl_jax.train import shapes

    check_geometry(cfg, stage)
    devices = topology_devices(topology)
    mesh = topology_mesh(cfg, devices)
    hbm = hbm_bytes(devices[0])
    mc = model_config(cfg)
    bad_impl = [a for a in attention if a not in ATTENTION_IMPLS]
    if bad_impl:
        raise AOTError(f"--attention {bad_impl}: expected a subset of {ATTENTION_IMPLS}")
    impls = list(attention) or [mc.attention_impl]
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
        for impl in impls:
            m = mc.replace(attention_impl=impl)
            tag = f" [{impl}]" if len(impls) > 1 else ""
            if "ppo" in parts:
                jobs.append(lambda T=T, m=m, tag=tag: _with_resident(compile_ppo_step(m, pc, mesh, rows, T), ppo_resident, tag))
            if "ref" in parts:
                jobs.append(lambda T=T, m=m, tag=tag: _with_resident(compile_logprobs(m, pc, mesh, rows, T), fwd_resident, tag))
            if "critic" in parts or (pc.use_critic and "ref" in parts):
                jobs.append(lambda T=T, m=m, tag=tag: _with_resident(compile_values(m, pc, mesh, rows, T), fwd_resident, tag))
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


def _with_resident(row: Row, resident: int, tag: str = "") -> Row:
    row.resident = resident
    row.name += tag
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
            f"fits (<{fraction:.0%})", "tokens/call", "model TFLOP/chip", "ideal s", "HLO TFLOP/chip", "compile s",
            "attention", "attn % FLOPs"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        per_chip = r.model_flops / (r.chips or info["chips"])
        ideal = f"{per_chip / peak:.2f}" if peak else "-"
        common = [f"{r.tokens:,}", f"{per_chip / 1e12:.1f}", ideal]
        attn = [r.attention or "-", f"{100 * r.attn_flops / r.model_flops:.0f}%" if r.model_flops else "-"]
        if r.error:
            vals = [r.name, r.shape] + ["-"] * 7 + ["ERROR: " + r.error] + common + ["-", f"{r.compile_s:.0f}"] + attn
        else:
            vals = [r.name, r.shape, _size(r.args), _size(r.outputs), _size(r.alias), _size(r.temps),
                    _size(r.resident), _size(r.peak), f"{100 * r.peak / r.hbm:.0f}%",
                    "yes" if r.fits(fraction) else "NO"] + common + [f"{r.flops / 1e12:.2f}", f"{r.compile_s:.0f}"] + attn
        lines.append("| " + " | ".join(vals) + " |")
    lines.append("")
    lines.append("peak = args + out - alias (donated) + temps + resident (what the trainer keeps in HBM beside "
                 "the function: beside the PPO step and the log-prob forward, the rollout engine's KV cache and params "
                 "copy (the trainer keeps them for the whole stage), the KL reference params, and beside the forward "
                 "the optimizer state; beside a sampler call the train state (all but the params its arguments hold "
                 "when it has no copy of its own) and, with eval.every > 0, the other engine's cache); "
                 "model FLOPs = tokens x (2 N_matmul + 4 L T H Dh), x3 "
                 "for training, no remat recompute; ideal s = model FLOPs per chip / peak bf16 FLOP/s; HLO FLOPs "
                 "(cost_analysis) count each loop body once (scans over epochs, mini/micro-batches and layers) and "
                 "nothing inside a Pallas kernel (splash); attention = model.attention_impl as compiled (the "
                 "sampler's KV-cache attention is always xla); attn % FLOPs = 4 L T H Dh of the model FLOPs "
                 "(dense; the causal kernels skip about half of it).")
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
    p.add_argument("--attention", default="", help="comma-separated attention implementations to compile the "
                   "training side with, side by side (e.g. xla,splash; default: config.model.attention_impl)")
    args, rest = p.parse_known_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        cfg = load_config(args.config)
        apply_overrides(cfg, rest)
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
        attention = [a for a in args.attention.split(",") if a]
        rows, info = run(cfg, topo, buckets, parts, args.stage, log=lambda s: print(s, flush=True), attention=attention)
        info["name"] = f"{args.config} ({info['name']})"
    except AOTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(rows, info, frac))
    return 0 if all(r.fits(frac) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
