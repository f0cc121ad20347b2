"""Rollout throughput on ALFWorld with a random tiny LLaMA: episodes/s and the share of wall time
the model is busy (inside SamplerEngine calls), for several schedules measured in the same run.

    python benchmarks/bench_rollout.py [--tasks 8] [--group 4] [--max-turns 8] [--model tiny|small]
                                       [--schedules lockstep cohorts2 pool]

Schedules: lockstep = sample every live episode, then step every env (num_cohorts=1); cohorts2 =
two cohorts, one samples while the other's envs step; both with in-process ALFWorld engines (one
env thread: TextWorld is not thread-safe). pool = cohorts2 with envs in an EnvPool of --pool-size
worker processes (true parallel env steps; fewer live episodes). A warm-up rollout compiles first.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax

from pilotrl_jax.agent.tokenizer import build_word_tokenizer
from pilotrl_jax.envs.alfworld_env import AlfWorldEnv
from pilotrl_jax.envs.alfworld_gen import generate_tasks
from pilotrl_jax.envs.process import EnvPool
from pilotrl_jax.models import llama
from pilotrl_jax.models.config import LlamaConfig
from pilotrl_jax.rollout import RolloutConfig, RolloutRunner
from pilotrl_jax.sampling import SamplerEngine, trace_counts

MODELS = {
    "tiny": dict(),  # LlamaConfig.tiny: 2 layers, hidden 64
    "small": dict(hidden_size=512, intermediate_size=1376, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64),
}


def main():
    """Run the schedules and print the table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-turns", type=int, default=8)
    ap.add_argument("--plan-tokens", type=int, default=64)
    ap.add_argument("--action-tokens", type=int, default=48)
    ap.add_argument("--model", default="tiny", choices=sorted(MODELS))
    ap.add_argument("--pool-size", type=int, default=8)
    ap.add_argument("--schedules", nargs="+", default=["lockstep", "cohorts2", "pool"],
                    choices=["lockstep", "cohorts2", "cohorts4", "pool"])
    ap.add_argument("--games", default=None, help="directory for generated ALFWorld games (default: a temp dir)")
    args = ap.parse_args()

    games = args.games or tempfile.mkdtemp(prefix="alf_bench_")
    tasks = generate_tasks(games, args.tasks, 0, seed=0)["train"]
    n_eps = args.tasks * args.group
    envs = [AlfWorldEnv() for _ in range(n_eps)]
    texts = []
    for t, e in zip(tasks, envs):
        obs, info = e.reset(t)
        texts += [obs] + list(info["admissible_actions"])
    tok = build_word_tokenizer(texts * 3, vocab_size=2048)
    cfg = LlamaConfig.tiny(vocab_size=len(tok), **MODELS[args.model])
    params = llama.init_params(cfg, jax.random.PRNGKey(0))
    engine = SamplerEngine(cfg, params, max_batch=n_eps, max_len=4096, tokenizer=tok, seed=0)
    print(f"ALFWorld: {args.tasks} tasks x {args.group} = {n_eps} episodes, max_turns={args.max_turns}, "
          f"plan/action tokens {args.plan_tokens}/{args.action_tokens}; model={args.model} "
          f"({cfg.num_params / 1e6:.2f}M params, vocab {cfg.vocab_size}); device={jax.devices()[0].platform}; "
          f"cpus={os.cpu_count()}")

    def rollout(schedule, envs_arg, n_tasks=None):
        rc = RolloutConfig(group_size=args.group, max_turns=args.max_turns, max_plan_tokens=args.plan_tokens,
                           max_action_tokens=args.action_tokens, num_cohorts=1 if schedule == "lockstep" else
                           4 if schedule == "cohorts4" else 2, env_threads=None if schedule == "pool" else 1,
                           progress=False, seed=0)
        return RolloutRunner(engine, envs_arg, tok, rc).run(tasks[:n_tasks] if n_tasks else tasks)

    t = time.perf_counter()
    for sched in ("lockstep", "cohorts2"):  # compile the sub-batch / window buckets the runs will use
        rollout(sched, envs)
    print(f"warm-up (compiles): {time.perf_counter() - t:.1f}s")

    rows = []
    pool = None
    try:
        for sched in args.schedules:
            if sched == "pool":
                pool = EnvPool("pilotrl_jax.envs.alfworld_env:AlfWorldEnv", args.pool_size)
                envs_arg = pool
            else:
                envs_arg = envs
            before = sum(trace_counts().values())
            b = rollout(sched, envs_arg)
            st = b.stats
            s = b.summary()
            rows.append((sched, st["slots"], st["wall_s"], st["episodes_per_s"], st["model_busy"],
                         st["env_wait_s"] / st["wall_s"], st["mean_generate_rows"], st["policy_tokens"] / st["wall_s"],
                         s["mean_turns"], sum(trace_counts().values()) - before))
    finally:
        if pool is not None:
            pool.close()
        for e in envs:
            e.close()
    print(f"{'schedule':>9} {'live':>4} {'wall s':>7} {'ep/s':>6} {'model busy':>10} {'env wait':>8} "
          f"{'rows/call':>9} {'gen tok/s':>9} {'turns':>5} {'compiles':>8}")
    for r in rows:
        print(f"{r[0]:>9} {r[1]:>4} {r[2]:>7.1f} {r[3]:>6.2f} {r[4]:>10.1%} {r[5]:>8.1%} {r[6]:>9.1f} {r[7]:>9.0f} "
              f"{r[8]:>5.1f} {r[9]:>8}")


if __name__ == "__main__":
    main()
