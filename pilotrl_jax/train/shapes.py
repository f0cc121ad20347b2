"""The array shapes the trainer runs, derived with the trainer's own functions and defaults.

`python -m pilotrl_jax.aot` compiles these shapes and `pilotrl_jax.train.memory_plan` budgets them, so
neither keeps a copy of a setting the trainer decides:
- PPO batches: tasks_per_step x group_size rows, padded to `trainer.seq_bucket(cfg)` lengths
  (`buckets.bucket_length`: a power of two, or a multiple of `rollout.pad_multiple`);
- sampler engines (`train.evaluation.make_engine`): `agent.token_budget` cache slots, the engine's own
  prefill/decode chunks (`SamplerEngine` defaults: make_engine passes none), the rollout engine's
  rows (a host's share of a step's episodes, capped by `rollout.max_batch`) and the evaluation
  engine's rows (`evaluate`'s max_rows cap over the held-out tasks x samples), each call's rows and
  window bucketed by `buckets.bucket_length` as `SamplerEngine.generate` does.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Optional

from pilotrl_jax.buckets import bucket_length


def model_config(cfg, **overrides):
    """The run's LlamaConfig without loading weights: the model directory's config.json (model.source
    'hf', as `setup.build_context` reads it) else model.hf_config, the checkpoint's config ('checkpoint'),
    or the tiny fields ('tiny'; vocabulary = tokenizer.vocab_size). Raises FileNotFoundError naming the file."""
    import json
    import os

    from pilotrl_jax.models.config import LlamaConfig, run_config_overrides

    m = cfg.model
    ours = run_config_overrides(m)
    ours.update(overrides)
    if m.get("source") == "tiny":
        return LlamaConfig(vocab_size=int(cfg.tokenizer.vocab_size), hidden_size=int(m.hidden_size),
                           intermediate_size=int(m.intermediate_size), num_layers=int(m.num_layers),
                           num_heads=int(m.num_heads), num_kv_heads=int(m.num_kv_heads), head_dim=int(m.head_dim),
                           max_position_embeddings=max(4096, int(cfg.agent.token_budget)),
                           tie_word_embeddings=bool(m.get("tie_word_embeddings", False)), **ours)
    if m.get("source") == "checkpoint":
        from pilotrl_jax.models import param_store

        with open(param_store.resolve_params_dir(str(m.path))[1]) as f:
            return param_store.config_from_json(json.load(f), **ours)
    path = os.path.join(str(m.get("path", "")), "config.json")
    if os.path.isfile(path):
        return LlamaConfig.from_json_file(path, **ours)
    hf = m.get("hf_config")
    if hf:
        return LlamaConfig.from_hf_dict(hf.to_dict() if hasattr(hf, "to_dict") else dict(hf), **ours)
    raise FileNotFoundError(f"config.model.path={m.get('path')!r} has no config.json and config.model has no "
                            "hf_config; point model.path at an HF model directory (or add its config dict as "
                            "config.model.hf_config, see configs/tpu_llama31_8b.py)")


def _default(fn: Callable, name: str) -> Any:
    """The default of parameter `name` of `fn`: the value the trainer runs with by not passing it."""
    return inspect.signature(fn).parameters[name].default


def engine_chunks() -> tuple[int, int]:
    """(prefill_chunk, decode_chunk) of the trainer's sampler engines (`SamplerEngine`'s defaults)."""
    from pilotrl_jax.sampling import engine

    init = engine.SamplerEngine.__init__
    prefill = bucket_length(int(_default(init, "prefill_chunk")), "pow2", engine.MIN_PREFILL)  # as the engine rounds it
    return prefill, int(_default(init, "decode_chunk"))


def eval_max_rows() -> int:
    """The most rows an evaluation engine holds (`train.evaluation.evaluate`'s max_rows default)."""
    from pilotrl_jax.train import evaluation

    return int(_default(evaluation.evaluate, "max_rows"))


def seq_bucket(cfg) -> Any:
    """How the trainer pads a PPO batch's length ('pow2' or a multiple k): `trainer.seq_bucket`."""
    from pilotrl_jax.train import trainer

    return trainer.seq_bucket(cfg)


def seq_len(cfg, longest: int) -> int:
    """The PPO batch length the trainer uses when the longest episode has `longest` tokens."""

    return bucket_length(int(longest), seq_bucket(cfg))


def longest_seq_len(cfg) -> int:
    """The longest PPO batch length of a run: the bucket of an episode filling agent.token_budget."""
    return seq_len(cfg, int(cfg.agent.token_budget))


def seq_lengths(cfg) -> list[int]:
    """Representative PPO batch lengths: the buckets of a quarter, half and all of agent.token_budget."""
    budget = int(cfg.agent.token_budget)
    return sorted({seq_len(cfg, max(1, budget // d)) for d in (4, 2, 1)})


def is_seq_len(cfg, n: int) -> bool:
    """Whether the trainer can pad a PPO batch to length `n` (a fixed point of its bucketing, within budget)."""
    return 0 < int(n) <= longest_seq_len(cfg) and seq_len(cfg, int(n)) == int(n)


def ppo_rows(st) -> int:
    """Rows of one PPO batch: the stage's tasks_per_step x group_size."""
    return int(st.tasks_per_step) * int(st.group_size)


def host_share(n: int, hosts: int) -> int:
    """The most of `n` items one of `hosts` hosts gets (`train.multihost.split_evenly`)."""
    from pilotrl_jax.train.multihost import split_evenly

    return max(len(split_evenly(int(n), int(hosts), i)) for i in range(int(hosts)))


def host_rows(st, hosts: int = 1) -> int:
    """Episodes one host rolls out per step: its share of the tasks x group size."""
    return host_share(int(st.tasks_per_step), hosts) * int(st.group_size)


def rollout_rows(cfg, st, hosts: int = 1, max_batch: Optional[int] = None) -> int:
    """The rollout engine's rows on one host, as `run_rl_stage` sizes it: the host's episodes of a step,
    capped by rollout.max_batch (or `max_batch`, e.g. a value the memory plan derived; 0 = no cap)."""
    rows = host_rows(st, hosts)
    cap = int(cfg.rollout.get("max_batch", 0) or 0) if max_batch is None else int(max_batch)
    return max(1, min(rows, cap) if cap else rows)


def eval_tasks(cfg) -> int:
    """Held-out tasks an evaluation runs: eval.num_tasks of the env.num_eval_tasks loaded."""
    return max(1, min(int(cfg.eval.num_tasks), int(cfg.env.num_eval_tasks)))


def eval_rows(cfg, hosts: int = 1, group_size: Optional[int] = None) -> int:
    """The evaluation engine's rows on one host: its share of the held-out tasks x samples per task
    (eval.group_size at a stage's end; 1 for the evaluations every eval.every steps), capped by max_rows."""
    g = int(cfg.eval.group_size) if group_size is None else int(group_size)
    return max(1, min(eval_max_rows(), host_share(eval_tasks(cfg), hosts) * g))


@dataclasses.dataclass(frozen=True)
class SamplerShape:
    """A sampler engine's worst-case call: every cache row busy, the whole window, the largest chunk."""

    role: str  # "rollout" (training episodes) or "eval" (held-out evaluation)
    rows: int  # the engine's cache rows (its max_batch)
    batch: int  # rows of its largest call: bucket_length(rows, "pow2", the mesh's row shards); > rows means a gathered copy
    window: int  # cache slots a call attends over (agent.token_budget)
    prefill_chunk: int  # tokens per prefill call at most
    decode_chunk: int  # decode steps per call
    temperature: float
    top_k: int
    top_p: float

    @property
    def mode(self) -> str:
        """The decode kernel's sampling mode (`sampling.filters.mode_for`)."""
        from pilotrl_jax.sampling import filters

        return filters.mode_for(self.temperature, self.top_k, self.top_p)


def sampler_shape(cfg, role: str, rows: int, row_shards: int = 1) -> SamplerShape:
    """The worst-case call of an engine of `rows` rows made by `make_engine` for this config: rollout
    sampling settings (rollout.*) or the evaluation's (eval.temperature / eval.top_p, rollout.top_k)."""
    from pilotrl_jax.sampling import engine

    if role not in ("rollout", "eval"):
        raise ValueError(f"role={role!r}; expected 'rollout' or 'eval'")
    max_len = int(cfg.agent.token_budget)
    prefill, decode = engine_chunks()
    r, e = cfg.rollout, cfg.eval
    temperature, top_p = (r.temperature, r.top_p) if role == "rollout" else (e.temperature, e.top_p)
    return SamplerShape(
        role=role, rows=int(rows), batch=bucket_length(int(rows), "pow2", max(1, int(row_shards))),
        window=bucket_length(max_len, "pow2", engine.MIN_WINDOW, max_len),
        # the longest feed: every token but the pending one of an episode at the cache's length
        prefill_chunk=bucket_length(max(1, max_len - 1), "pow2", engine.MIN_PREFILL, prefill),
        decode_chunk=decode, temperature=float(temperature), top_k=int(r.top_k), top_p=float(top_p))
