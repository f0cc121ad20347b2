"""Evaluation: run the policy on held-out tasks and report success per environment and task type.

On several hosts the tasks are split over them (contiguous shares), each host runs its share with
its own sampler, and the per-episode records are gathered so every process holds the full table
(process 0 writes it).
"""
from __future__ import annotations

import collections
import json
import math
import types
from typing import Any, Optional, Sequence

import numpy as np

from pilotrl_jax import distributed as dist
from pilotrl_jax.rollout import RolloutConfig, RolloutRunner, SamplerPolicy
from pilotrl_jax.sampling.engine import SamplerEngine
from pilotrl_jax.train import multihost


def make_engine(ctx, params, rows: int, seed: int, episodes: Optional[int] = None) -> SamplerEngine:
    """A sampler engine over `params` sized for `rows` episodes of the run's token budget (rollout.kv_cache=
    'paged': a pool of that memory (or rollout.cache_pages) holding up to max(rows, `episodes`) episodes,
    admitted by free pages)."""
    from pilotrl_jax.agent.parser import STOP_STRINGS

    r = ctx.cfg.rollout
    if r.get("kv_cache", "dense") == "paged":
        from pilotrl_jax.sampling.paged import PagedSamplerEngine, pages_for

        budget, ps = int(ctx.cfg.agent.token_budget), int(r.page_size)
        return PagedSamplerEngine(
            ctx.model_cfg, multihost.sampler_params(ctx, params), max_batch=max(1, rows, int(episodes or 0)),
            max_len=budget,
            num_pages=int(r.cache_pages) or max(1, rows) * pages_for(budget, ps), page_size=ps,
            reserve_len=int(r.page_reserve_tokens) or None, paged_attention_impl=str(r.paged_attention_impl),
            mesh=multihost.sampler_mesh(ctx), seed=seed, tokenizer=ctx.tokenizer, stop_strings=STOP_STRINGS,
            share_prefix=bool(r.get("share_prefix", True)), fine_buckets=bool(r.get("fine_buckets", True)))
    return SamplerEngine(ctx.model_cfg, multihost.sampler_params(ctx, params), max_batch=max(1, rows),
                         max_len=int(ctx.cfg.agent.token_budget), mesh=multihost.sampler_mesh(ctx), seed=seed,
                         tokenizer=ctx.tokenizer, stop_strings=STOP_STRINGS,
                         share_prefix=bool(r.get("share_prefix", True)),
                         fine_buckets=bool(r.get("fine_buckets", True)))


def rollout_config(ctx, *, group_size: int, mode: str, replan: Optional[str], temperature: float, top_p: float,
                   seed: int, progress: bool = True, exemplar: Optional[str] = None) -> RolloutConfig:
    """RolloutConfig from the run's agent/rollout sections; `exemplar` ('' | 'expert', None = the run's
    agent.exemplar) picks the example episode in the system prompt (built once per mode, see setup)."""
    from pilotrl_jax.train.setup import run_exemplar

    a, r = ctx.cfg.agent, ctx.cfg.rollout
    in_process = not ctx.cfg.env.isolate and ctx.cfg.env.name in ("alfworld", "scienceworld")
    threads = int(r.env_threads) or (1 if in_process else None)
    return RolloutConfig(
        group_size=int(group_size), mode=mode, replan=replan if mode == "adaplan" else None,
        max_turns=int(a.max_turns), max_plan_tokens=int(a.max_plan_tokens), max_action_tokens=int(a.max_action_tokens),
        token_budget=int(a.token_budget), max_format_errors=int(a.max_format_errors) or None,
        show_admissible=bool(a.show_admissible), prompt_style=str(a.get("prompt_style", "full")), temperature=float(temperature), top_p=float(top_p),
        exemplar=run_exemplar(ctx, mode, replan if mode == "adaplan" else None, exemplar),
        top_k=int(r.top_k), num_cohorts=int(r.num_cohorts), env_threads=threads, seed=int(seed), progress=progress,
    )


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of the chance that at least one of k samples succeeds, from n samples with c
    successes (Chen et al., 2021): 1 - C(n - c, k) / C(n, k)."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 < k <= n and 0 <= c <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def success_table(batch, tasks: Sequence[Any]) -> dict:
    """Success rate overall and per task type from a RolloutBatch (group-major order), and pass@k over
    tasks for k = the samples each task got (how much a policy could gain by sharpening alone)."""
    by_type: dict = collections.defaultdict(lambda: [0, 0])
    by_task: dict = collections.defaultdict(lambda: [0, 0])
    for e in batch.episodes:
        t = tasks[e.group_id]
        key = t.task_type or "all"
        by_type[key][0] += int(bool(e.won))
        by_type[key][1] += 1
        by_task[e.group_id][0] += int(bool(e.won))
        by_task[e.group_id][1] += 1
    n = len(batch.episodes)
    won = sum(int(bool(e.won)) for e in batch.episodes)
    k = min((v[1] for v in by_task.values()), default=0)
    by_sample: dict = collections.defaultdict(list)  # sample index -> wins over the tasks
    for e in batch.episodes:
        by_sample[int(getattr(e, "sample", 0))].append(float(bool(e.won)))
    per_sample = [sum(v) / len(v) for _, v in sorted(by_sample.items())]
    return {
        "episodes": n,
        "success_rate": won / max(n, 1),
        "samples_per_task": k,
        "pass_at_k": sum(pass_at_k(v[1], v[0], k) for v in by_task.values()) / max(len(by_task), 1) if k else 0.0,
        "per_type": {k: {"success_rate": v[0] / v[1], "episodes": v[1]} for k, v in sorted(by_type.items())},
        "mean_turns": sum(e.num_turns for e in batch.episodes) / max(n, 1),
        "format_error_rate": sum(int(e.format_errors > 0) for e in batch.episodes) / max(n, 1),
        "format_errors_per_episode": sum(int(e.format_errors) for e in batch.episodes) / max(n, 1),
        # the spread over samples: success of sample s over every task, for s = 0..k-1 (population std)
        "success_by_sample": per_sample,
        "success_std_over_samples": float(np.std(per_sample)) if per_sample else 0.0,
    }


class EpisodeRecords:
    """Episodes gathered from every host as `EpisodeResult.to_dict()` records (attributes readable
    like an EpisodeResult's: group_id, won, num_turns, ...); `to_jsonl` writes them as RolloutBatch does."""

    def __init__(self, records: Sequence[dict]):
        self.records = list(records)
        self.episodes = [types.SimpleNamespace(**r) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def to_jsonl(self, path: str) -> None:
        """Write one JSON line per episode (metadata + span texts) to `path`."""
        with open(path, "w") as f:
            for r in self.records:
                f.write(json.dumps(r) + "\n")


def evaluate(ctx, params, tasks: Sequence[Any], mode: str = "adaplan", replan: Optional[str] = None,
             temperature: Optional[float] = None, top_p: Optional[float] = None, seed: int = 12345,
             group_size: int = 1, max_rows: int = 64, progress: bool = True,
             exemplar: Optional[str] = None) -> tuple[dict, Any]:
    """Run the policy (its own plans) on `tasks`; returns (success table, RolloutBatch).

    `exemplar` ('' | 'expert', None = config.agent.exemplar) sets the example episode in the prompt.
    On several hosts every process must call it (it is collective): each runs its share of `tasks`
    and gets the table over all of them, with an `EpisodeRecords` of every host's episodes."""
    e = ctx.cfg.eval
    temperature = float(e.temperature if temperature is None else temperature)
    top_p = float(e.top_p if top_p is None else top_p)
    replan = replan or ctx.cfg.agent.replan
    if multihost.is_multihost():
        return _evaluate_hosts(ctx, params, list(tasks), mode, replan, temperature, top_p, seed, group_size,
                               max_rows, progress, exemplar)
    rows = min(max_rows, len(tasks) * group_size)
    engine = make_engine(ctx, params, rows, seed, episodes=len(tasks) * group_size)
    rc = rollout_config(ctx, group_size=group_size, mode=mode, replan=replan, temperature=temperature, top_p=top_p,
                        seed=seed, progress=progress, exemplar=exemplar)
    runner = RolloutRunner(SamplerPolicy(engine, temperature, top_p, int(ctx.cfg.rollout.top_k)),
                           ctx.env_factory, ctx.tokenizer, rc)
    batch = runner.run(list(tasks))
    return success_table(batch, list(tasks)), batch


def _evaluate_hosts(ctx, params, tasks, mode, replan, temperature, top_p, seed, group_size, max_rows,
                    progress, exemplar=None) -> tuple[dict, EpisodeRecords]:
    """`evaluate` on several hosts: this host's share of the tasks, then every host's records."""
    import jax

    params = multihost.sampler_params(ctx, params)  # collective: before any host-dependent branch
    mine = multihost.split_evenly(len(tasks), jax.process_count(), jax.process_index())
    records: list = []
    if len(mine):
        local = [tasks[i] for i in mine]
        engine = make_engine(ctx, params, min(max_rows, len(local) * group_size), seed)
        rc = rollout_config(ctx, group_size=group_size, mode=mode, replan=replan, temperature=temperature,
                            top_p=top_p, seed=multihost.host_seed(seed), progress=progress and dist.is_coordinator(),
                            exemplar=exemplar)
        batch = RolloutRunner(SamplerPolicy(engine, temperature, top_p, int(ctx.cfg.rollout.top_k)),
                              ctx.env_factory, ctx.tokenizer, rc).run(local)
        for ep in batch.episodes:
            ep.group_id = mine.start + ep.group_id  # the task's index in `tasks`
        records = [ep.to_dict() for ep in batch.episodes]
    gathered = EpisodeRecords([r for part in dist.allgather_json(records) for r in part])
    return success_table(gathered, tasks), gathered


def per_type_columns(rows: Sequence[dict]):
    """(header text, row -> cells text) of the per-task-type success columns of a table of `rows`."""
    types = sorted({k for r in rows for k in r.get("per_type", {})})

    def cells(r: dict) -> str:
        per = r.get("per_type", {})
        return " ".join(f"{per[t]['success_rate'] * 100:>13.1f}%" if t in per else f"{'-':>14}" for t in types)

    return " ".join(f"{t[:14]:>14}" for t in types), cells


def format_table(rows: Sequence[dict]) -> str:
    """A plain-text table of evaluation rows (keys: model, mode, success_rate, episodes, per_type)."""
    type_head, type_cells = per_type_columns(rows)
    head = f"{'model':<14} {'mode':<8} {'success':>8} {'episodes':>8} {'pass@k':>10} " + type_head
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = type_cells(r)
        pk = (f"{r['pass_at_k'] * 100:.1f}% @{r['samples_per_task']}" if r.get("samples_per_task") else "-").rjust(10)
        lines.append(f"{r['model']:<14} {r['mode']:<8} {r['success_rate'] * 100:>7.1f}% {r['episodes']:>8} {pk} {cells}")
    return "\n".join(lines)
