"""Per-device memory arithmetic of an RL stage: the terms one device holds (train state, sampler copy,
KV caches, prefill, update activations) from plain numbers, pure; `train.memory_plan` fills them from a
config and decides."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

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


def plural(n: int, word: str) -> str:
    """'1 device', '8 devices'."""
    return f"{n} {word}" + ("" if n == 1 else "s")



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


def describe_kv(mc, rows: int, window: int, mesh: Sequence[int]) -> str:
    """How the KV cache is laid out, in words (rows per device, slots, layers), for the plan's messages."""
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
                    f"{plural(sf * stt, 'device')}")
    if mc.scan_layers:
        d, f, t = g.mesh
        return Term("sampler params copy", param_bytes(mc, f * t),
                    f"scanned layers are decoded from a per-layer copy: {mc.num_params / 1e9:.2f}B x "
                    f"{itemsize(mc.param_dtype)} B / {plural(f * t, 'device')}")
    return None


def _state_terms(mc, g: Geometry) -> list:
    d, f, t = g.mesh
    pb = itemsize(mc.param_dtype)
    models = 2 if g.critic else 1
    out = [Term("train state", 3 * models * param_bytes(mc, f * t),
                f"{mc.num_params / 1e9:.2f}B params x {3 * pb} B (params + 2 Adam moments, {mc.param_dtype})"
                + (" x 2 (critic)" if g.critic else "") + f" / {plural(f * t, 'device')}")]
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
                    describe_kv(mc, g.sampler_rows, g.window, g.sampler_mesh)))
    if g.eval_rows_during:
        out.append(Term("eval KV cache (eval.every)", kv_cache_bytes(mc, g.eval_rows_during, g.window, g.sampler_mesh),
                        describe_kv(mc, g.eval_rows_during, g.window, g.sampler_mesh)))
    return out


def prefill_terms(mc, rows: int, chunk: int, window: int, mesh: Sequence[int], label: str = "") -> list:
    """One device's transient memory of an engine's worst-case prefill call (cache of `rows` rows)."""
    from pilotrl_jax.buckets import bucket_length

    d, f, t = mesh
    batch = bucket_length(rows, "pow2", d * f)  # SamplerEngine.generate's sub-batch over every busy row
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
                   f"/ {plural(f * t, 'device')}")]
    copy = _sampler_params_term(mc, g)
    ev = params + ([copy] if copy else []) + [
        Term("eval KV cache", kv_cache_bytes(mc, g.eval_rows, g.window, g.sampler_mesh),
             describe_kv(mc, g.eval_rows, g.window, g.sampler_mesh))] + prefill_terms(
        mc, g.eval_rows, g.prefill_chunk, g.window, g.sampler_mesh, "eval ")
    return Estimate({"rollout": tuple(rollout), "update": tuple(update), "eval": tuple(ev)})
