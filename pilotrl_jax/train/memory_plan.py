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
from typing import Callable, Optional, Sequence

GIB = 1024 ** 3
BUDGET_FRACTION = 0.9  # of a device's reported memory: room for what the estimate leaves out
LOGITS_CHUNK_HINT = 1024  # rl.logits_chunk_size the messages suggest

# Bytes per device by `jax.Device.device_kind`, used when the device does not report its limit.
DEVICE_MEMORY = {
    "TPU v4": 32 * GIB,
    "TPU v5 lite": 16 * GIB,  # v5e
    "TPU v5": 95 * GIB,  # v5p
    "TPU v5p": 95 * GIB,
    "TPU v6 lite": 32 * GIB,  # v6e (Trillium)
    "TPU v6e": 32 * GIB,
    "NVIDIA H200": 143771 * 1024 ** 2,
    "NVIDIA H100 80GB HBM3": 81559 * 1024 ** 2,
    "NVIDIA A100-SXM4-80GB": 81920 * 1024 ** 2,
    "NVIDIA A100-SXM4-40GB": 40960 * 1024 ** 2,
}

_ITEMSIZE = {"float32": 4, "bfloat16": 2}


class MemoryPlanError(ValueError):
    """A stage that does not fit the devices' memory; the message names the keys to change."""


# ----------------------------------------------------------------------------- inputs


@dataclasses.dataclass(frozen=True)
class Devices:
    """The devices of a run as the plan sees them (plain numbers: tests simulate any host)."""

    count: int  # devices of the training mesh, all hosts
    hosts: int = 1
    memory: int = 0  # bytes one device may use (0 = unknown)
    kind: str = ""
    source: str = ""  # where `memory` came from

    @property
    def local(self) -> int:
        """Devices of one host (the sampler's, on several hosts)."""
        return max(1, self.count // max(1, self.hosts))


@dataclasses.dataclass(frozen=True)
class Geometry:
    """The integers a stage's plan depends on."""

    mesh: tuple  # (data, fsdp, tensor) of the training mesh
    sampler_mesh: tuple  # (data, fsdp, tensor) of the sampler engines' mesh (one host's on several hosts)
    hosts: int
    rows: int  # PPO rows per step
    micro_rows: int  # rows of one PPO micro-batch (whole mesh)
    seq_len: int  # the longest PPO batch length
    sampler_rows: int  # the rollout engine's rows (one host)
    eval_rows: int  # the stage-end evaluation engine's rows (one host)
    eval_rows_during: int  # rows of the evaluation engine beside the rollout engine (eval.every > 0), else 0
    window: int  # cache slots (agent.token_budget)
    prefill_chunk: int
    critic: bool = False
    ref: bool = False
    logits_chunk: int = 0  # rl.logits_chunk_size (0 = every position at once)
    batch_keys: int = 6  # [rows, seq_len] arrays of the PPO batch


@dataclasses.dataclass(frozen=True)
class Term:
    """One per-device memory term: name, bytes, and the arithmetic behind them."""

    name: str
    bytes: int
    how: str = ""


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Per-device terms of each phase of a stage (every phase lists all it holds)."""

    phases: dict  # phase name -> tuple of Terms

    def total(self, phase: str) -> int:
        """Bytes per device during `phase`."""
        return sum(t.bytes for t in self.phases[phase])

    @property
    def peak_phase(self) -> str:
        """The phase that needs the most memory."""
        return max(self.phases, key=self.total)

    @property
    def peak(self) -> int:
        """Bytes per device at the stage's peak."""
        return self.total(self.peak_phase)

    @property
    def train_peak(self) -> int:
        """Bytes per device at the peak of the training loop (rollout and update; not the stage-end evaluation)."""
        return max(self.total(p) for p in self.phases if p != "eval")

    def table(self, phase: Optional[str] = None) -> str:
        """The terms of `phase` (default: the peak's), one per line, with their arithmetic."""
        phase = phase or self.peak_phase
        lines = [f"  {t.name:<34} {gib(t.bytes):>10}  {t.how}" for t in self.phases[phase]]
        return "\n".join(lines + [f"  {'= ' + phase + ' phase':<34} {gib(self.total(phase)):>10}"])


def gib(x: float) -> str:
    """Bytes as GiB (TiB when huge), one decimal."""
    return f"{x / GIB / 1024:.1f} TiB" if x >= 1024 * GIB else f"{x / GIB:.1f} GiB"


# ----------------------------------------------------------------------------- arithmetic (pure)


def itemsize(dtype: str) -> int:
    """Bytes per element of a model dtype name."""
    if dtype not in _ITEMSIZE:
        raise ValueError(f"dtype {dtype!r}; expected one of {sorted(_ITEMSIZE)}")
    return _ITEMSIZE[dtype]


def split(n: int, ways: int) -> int:
    """Ways a dimension of size n splits over `ways` devices (the sharding rules drop an axis that does not divide)."""
    return ways if ways > 1 and n % ways == 0 else 1


def row_split(rows: int, data: int, fsdp: int) -> int:
    """Ways `rows` batch rows are split over the (data, fsdp) axes, as `sharding.logical_to_spec` keeps them."""
    k = split(rows, data)
    return k * (fsdp if fsdp > 1 and rows % (k * fsdp) == 0 else 1)


def param_bytes(mc, shards: int, dtype: Optional[str] = None) -> int:
    """One device's share of the params in `dtype` (default model.param_dtype) over `shards` devices."""
    return -(-mc.num_params * itemsize(dtype or mc.param_dtype) // max(1, shards))


def kv_cache_bytes(mc, rows: int, window: int, mesh: Sequence[int]) -> int:
    """One device's share of a KV cache of `rows` x `window` slots (rows over data x fsdp, kv heads over tensor)."""
    d, f, t = mesh
    per_dev = rows // row_split(rows, d, f)
    kv = mc.num_kv_heads // split(mc.num_kv_heads, t)
    return 2 * mc.num_layers * per_dev * window * kv * mc.head_dim * itemsize(mc.dtype)


def attention_entries(T: int, query_chunk: int) -> int:
    """Score entries per head of one T-token row in training: the causal blocks of `query_chunk`
    queries read the keys up to their last query (`llama.Attention`); 0 = the full T x T matrix."""
    if not 0 < query_chunk < T:
        return T * T
    return sum((min(a + query_chunk, T) - a) * min(a + query_chunk, T) for a in range(0, T, query_chunk))


def _describe_kv(mc, rows: int, window: int, mesh: Sequence[int]) -> str:
    d, f, t = mesh
    per_dev = rows // row_split(rows, d, f)
    kv = mc.num_kv_heads // split(mc.num_kv_heads, t)
    return (f"{mc.num_layers} layers x 2 (k, v) x {kv} kv heads x {mc.head_dim} x {itemsize(mc.dtype)} B x "
            f"{window} slots x {per_dev} rows per device")


def _sampler_params_term(mc, g: Geometry) -> Optional[Term]:
    if g.hosts > 1:
        sd, sf, stt = g.sampler_mesh
        return Term("sampler params copy", param_bytes(mc, sf * stt, mc.dtype),
                    f"{mc.num_params / 1e9:.2f}B x {itemsize(mc.dtype)} B ({mc.dtype} host copy) / "
                    f"{_plural(sf * stt, 'device')}")
    if mc.scan_layers:
        d, f, t = g.mesh
        return Term("sampler params copy", param_bytes(mc, f * t),
                    f"scanned layers are decoded from a per-layer copy: {mc.num_params / 1e9:.2f}B x "
                    f"{itemsize(mc.param_dtype)} B / {_plural(f * t, 'device')}")
    return None


def _state_terms(mc, g: Geometry) -> list:
    d, f, t = g.mesh
    pb = itemsize(mc.param_dtype)
    models = 2 if g.critic else 1
    out = [Term("train state", 3 * models * param_bytes(mc, f * t),
                f"{mc.num_params / 1e9:.2f}B params x {3 * pb} B (params + 2 Adam moments, {mc.param_dtype})"
                + (" x 2 (critic)" if g.critic else "") + f" / {_plural(f * t, 'device')}")]
    if g.ref:
        out.append(Term("KL reference params", param_bytes(mc, f * t), "kl_coef > 0 keeps the stage's initial params"))
    copy = _sampler_params_term(mc, g)
    if copy is not None:
        out.append(copy)
    return out


def resident_terms(mc, g: Geometry) -> list:
    """What a device holds for the whole stage: train state, reference, params copy, KV caches."""
    out = _state_terms(mc, g)
    out.append(Term("rollout KV cache", kv_cache_bytes(mc, g.sampler_rows, g.window, g.sampler_mesh),
                    _describe_kv(mc, g.sampler_rows, g.window, g.sampler_mesh)))
    if g.eval_rows_during:
        out.append(Term("eval KV cache (eval.every)", kv_cache_bytes(mc, g.eval_rows_during, g.window, g.sampler_mesh),
                        _describe_kv(mc, g.eval_rows_during, g.window, g.sampler_mesh)))
    return out


def prefill_terms(mc, rows: int, chunk: int, window: int, mesh: Sequence[int], label: str = "") -> list:
    """One device's transient memory of an engine's worst-case prefill call (cache of `rows` rows)."""
    from pilotrl_jax.sampling.engine import pow2_bucket

    d, f, t = mesh
    batch = pow2_bucket(rows, d * f)  # SamplerEngine.generate's sub-batch over every busy row
    b = batch // row_split(batch, d, f)
    heads = mc.num_heads // split(mc.num_heads, t)
    cb = itemsize(mc.dtype)
    out = [Term(f"{label}prefill attention", b * heads * chunk * window * (4 + cb),
                f"{b} rows x {heads} heads x {chunk} x {window} x {4 + cb} B (f32 scores, {mc.dtype} probs)")]
    if batch != rows:
        out.append(Term(f"{label}prefill gathered rows", kv_cache_bytes(mc, batch, window, mesh),
                        f"{rows} rows are not a power of two: calls gather {batch} rows"))
    return out


def update_terms(mc, g: Geometry) -> list:
    """One device's transient memory of the PPO update (gradients, batch, one micro-batch's activations)."""
    d, f, t = g.mesh
    cb = itemsize(mc.dtype)
    models = 2 if g.critic else 1
    T = g.seq_len
    r = g.micro_rows // row_split(g.micro_rows, d, f)
    rows = g.rows // row_split(g.rows, d, f)
    D, I = mc.hidden_size, mc.intermediate_size
    heads = mc.num_heads // split(mc.num_heads, t)
    proj = (mc.num_heads * mc.head_dim + 2 * mc.num_kv_heads * mc.head_dim + 2 * I) // split(mc.num_heads, t)
    dots = D * cb + (proj + 2 * D) * 4  # per token: a layer's input and its matmul outputs (kept in float32)
    probs = heads * attention_entries(T, mc.attention_query_chunk) * (4 + cb)  # per row: softmax (f32) + probs
    layer = r * (T * (dots + 2 * (I // split(I, t)) * cb) + probs)
    kept = {"full": r * T * D * cb, "dots_no_batch": r * T * dots,
            "dots": r * (T * dots + heads * attention_entries(T, mc.attention_query_chunk) * 4),
            "none": layer}[mc.remat_policy]
    positions = min(T, g.logits_chunk) if g.logits_chunk else T
    vocab = mc.vocab_size // split(mc.vocab_size, t)
    out = [Term("gradients + optimizer temporaries", 3 * models * param_bytes(mc, f * t),
                f"3 x the params shard ({mc.param_dtype})" + (" x 2 (critic)" if g.critic else "")),
           Term("PPO batch (+ shuffled copy)", 2 * rows * T * 4 * g.batch_keys,
                f"2 x {rows} rows x {T} tokens x {g.batch_keys} arrays x 4 B"),
           Term(f"activations kept ({mc.remat_policy} remat)", mc.num_layers * models * kept,
                f"{mc.num_layers} layers x {r} rows x {T} tokens" + (" x 2 (critic)" if g.critic else ""))]
    if mc.remat_policy != "none":
        out.append(Term("one layer's recompute", layer,
                        f"{r} rows x {T} tokens, incl. {heads} heads x "
                        f"{attention_entries(T, mc.attention_query_chunk):,} attention entries x {4 + cb} B"))
    out.append(Term("LM-head logits", r * positions * vocab * 4 * 2,
                    f"{r} rows x {positions} positions x {vocab} vocab x 4 B x 2 (logits, their gradient)"))
    return out


def estimate(mc, g: Geometry) -> Estimate:
    """Per-device bytes of each phase of a stage (see the module docstring)."""
    resident = resident_terms(mc, g)
    rollout = resident + prefill_terms(mc, g.sampler_rows, g.prefill_chunk, g.window, g.sampler_mesh)
    update = resident + update_terms(mc, g)
    d, f, t = g.mesh
    params = [Term("params", param_bytes(mc, f * t), f"{mc.num_params / 1e9:.2f}B x {itemsize(mc.param_dtype)} B "
                   f"/ {_plural(f * t, 'device')}")]
    copy = _sampler_params_term(mc, g)
    ev = params + ([copy] if copy else []) + [
        Term("eval KV cache", kv_cache_bytes(mc, g.eval_rows, g.window, g.sampler_mesh),
             _describe_kv(mc, g.eval_rows, g.window, g.sampler_mesh))] + prefill_terms(
        mc, g.eval_rows, g.prefill_chunk, g.window, g.sampler_mesh, "eval ")
    return Estimate({"rollout": tuple(rollout), "update": tuple(update), "eval": tuple(ev)})


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


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


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
                f"{_plural(g0.micro_rows, 'row')} x {g0.seq_len} tokens: the update phase needs "
                f"{gib(estimate(mc, fewest).total('update'))} per device even with "
                f"{_plural(fewest.sampler_rows, 'rollout row')}; set config.rl.num_micro_batches={m} "
                f"({_plural(rows, 'row')} per micro-batch: "
                f"{gib(estimate(mc, dataclasses.replace(fewest, micro_rows=rows)).total('update'))}; more "
                "micro-batches leave more memory for rollout rows)")
        options = [r for r in _row_options(g, host_rows) if _fits(mc, dataclasses.replace(g, sampler_rows=r), limit)]
        if cap and not _fits(mc, g, limit):
            kv = kv_cache_bytes(mc, g.sampler_rows, g.window, g.sampler_mesh)
            out.fixes.append(
                f"config.rollout.max_batch={cap} needs a KV cache of {gib(kv)} per device "
                f"({_describe_kv(mc, g.sampler_rows, g.window, g.sampler_mesh)}), "
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
    return (f"even with {_plural(g_min.micro_rows, 'row')} per micro-batch (config.rl.num_micro_batches) and "
            f"{_plural(g_min.sampler_rows, 'rollout row')} (config.rollout.max_batch) the "
            f"{_train_peak_phase(est)} phase needs {gib(est.train_peak)} per device on "
            f"{_plural(devices.count, 'device')}; " + _devices_needed(cfg, st, mc, devices, limit)
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
