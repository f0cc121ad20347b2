"""Held-out evaluation rollout of the real SmolLM2-135M checkpoint: wall time vs a target and where it goes.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/bench_rollout_smollm2.py [--tasks 32] [--mode adaplan|react]
        [--max-turns 8] [--target 300] [--workdir /tmp/bench_smollm2] [--warmup-turns 2]

Runs what `pilotrl_jax.train.evaluation.evaluate` runs for configs/smollm2_alfworld.py (its engine,
its RolloutConfig: eval temperature / top_p, group 1, the config's token limits and num_cohorts),
on the first --tasks held-out tasks, with the engine's timers on (`SamplerEngine(timed=True)`: every
kernel is waited for, so gather / prefill / decode / scatter times are wall times). A warm-up rollout
of --warmup-turns turns compiles the shapes first; it is reported apart, and so is any compile that
still happens inside the timed run. Model busy = time inside the sampler's generate calls / wall.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import time

import jax

from pilotrl_jax.agent.spans import SpanKind
from pilotrl_jax.rollout import RolloutRunner, SamplerPolicy
from pilotrl_jax.traces import trace_counts

_COMPILE_S = [0.0]


def _on_event(event: str, secs: float, **_) -> None:
    """jax.monitoring listener: add backend compile time to _COMPILE_S."""
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILE_S[0] += secs


def load_config(path: str, arg: str = ""):
    """The ml_collections config of a config file (its get_config(arg))."""
    spec = importlib.util.spec_from_file_location("bench_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def run_eval(ctx, params, tasks, mode: str, max_turns: int, seed: int = 12345):
    """One held-out rollout as `evaluate` runs it (eval sampling, group 1) on a fresh timed engine."""
    from pilotrl_jax.train.evaluation import make_engine, rollout_config

    e = ctx.cfg.eval
    replan = ctx.cfg.agent.replan
    engine = make_engine(ctx, params, min(64, len(tasks)), seed)
    engine.timed = True
    rc = rollout_config(ctx, group_size=1, mode=mode, replan=replan, temperature=float(e.temperature),
                        top_p=float(e.top_p), seed=seed, progress=False)
    rc.max_turns = max_turns
    runner = RolloutRunner(SamplerPolicy(engine, float(e.temperature), float(e.top_p), int(ctx.cfg.rollout.top_k)),
                           ctx.env_factory, ctx.tokenizer, rc)
    _COMPILE_S[0] = 0.0
    before = sum(trace_counts().values())
    batch = runner.run(list(tasks))
    return batch, engine, sum(trace_counts().values()) - before, _COMPILE_S[0]


def _policy_tokens(batch, kind) -> tuple[int, int]:
    spans = [s for e in batch.episodes for s in e.spans if s.kind == kind]
    return sum(len(s.token_ids) for s in spans), len(spans)


def report(batch, engine, compiles: int, compile_s: float, target: float, uptime: str) -> str:
    """The benchmark table for one timed rollout."""
    st, es = batch.stats, engine.stats
    wall, n = st["wall_s"], len(batch.episodes)
    plan_t, plan_n = _policy_tokens(batch, SpanKind.PLAN)
    act_t, act_n = _policy_tokens(batch, SpanKind.ACTION)
    gen = st["generate_s"]
    parts = [("gather (sub-cache copy in)", es["gather_s"]), ("prefill", es["prefill_s"]),
             ("decode chunks (device)", es["decode_s"]),
             ("host between chunks (excl. stop checks)", es["host_s"] - es["stop_check_s"]),
             ("stop-string checks", es["stop_check_s"]), ("scatter (sub-cache copy out)", es["scatter_s"])]
    other = gen - sum(v for _, v in parts)
    s = batch.summary()
    lines = [
        f"load: {uptime}",
        f"{'wall time':<44} {wall:8.1f} s   (target {target:.0f} s: {'MET' if wall <= target else 'missed'})",
        f"{'episodes / s':<44} {n / wall:8.3f}     ({n} episodes, mean turns {s['mean_turns']:.1f}, "
        f"success {s['success_rate']:.0%})",
        f"{'model busy (generate / wall)':<44} {gen / wall:8.1%}   ({gen:.1f} s in {st['generate_calls']} "
        f"generate calls, {st['mean_generate_rows']:.1f} rows/call)",
        f"{'env wait':<44} {st['env_wait_s']:8.1f} s   ({st['env_calls']} env calls)",
        f"{'runner host work (wall - generate - env)':<44} {wall - gen - st['env_wait_s']:8.1f} s",
        f"{'plan tokens / plan turn':<44} {plan_t / max(plan_n, 1):8.1f}     ({plan_t} in {plan_n})",
        f"{'action tokens / action turn':<44} {act_t / max(act_n, 1):8.1f}     ({act_t} in {act_n})",
        f"{'prefill tokens (real / padded slots)':<44} {es['prefill_tokens']:8d}     "
        f"({es['prefill_slots']} slots in {es['prefill_calls']} calls)",
        f"{'prefix-cache tokens reused':<44} {es['prefix_tokens']:8d}",
        f"{'decode steps / tokens kept / overshoot':<44} {es['decode_steps']:8d}     "
        f"({es['decode_tokens']} kept, {es['overshoot_tokens']} dropped past stops, {es['decode_calls']} chunks)",
        f"{'mean rows x window per generate':<44} {es['rows_x_window'] / max(es['generate_calls'], 1):8.0f}",
        "time inside generate:",
    ]
    for name, v in parts + [("other (start/append/setup)", other)]:
        lines.append(f"  {name:<42} {v:8.1f} s  {v / max(gen, 1e-9):6.1%}")
    lines.append(f"{'  per decode step':<44} {1000 * es['decode_s'] / max(es['decode_steps'], 1):8.1f} ms")
    lines.append(f"{'  per prefill token':<44} {1000 * es['prefill_s'] / max(es['prefill_tokens'], 1):8.2f} ms")
    lines.append(f"{'compiles inside the timed run':<44} {compiles:8d}     ({compile_s:.1f} s compiling)")
    return "\n".join(lines)


def main():
    """Warm up, run the timed held-out rollout, print the table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/smollm2_alfworld.py")
    ap.add_argument("--tasks", type=int, default=32)
    ap.add_argument("--mode", default="adaplan", choices=["adaplan", "react"])
    ap.add_argument("--max-turns", type=int, default=None, help="default: the config's agent.max_turns")
    ap.add_argument("--warmup-turns", type=int, default=2)
    ap.add_argument("--target", type=float, default=300.0)
    ap.add_argument("--workdir", default="/tmp/bench_smollm2")
    args = ap.parse_args()
    if args.tasks < 1 or args.warmup_turns < 1:
        raise SystemExit(f"--tasks={args.tasks} and --warmup-turns={args.warmup_turns} must be >= 1")

    from pilotrl_jax.train import setup as S

    cfg = load_config(args.config)
    cfg.env.num_eval_tasks = max(int(cfg.env.num_eval_tasks), args.tasks)
    max_turns = args.max_turns or int(cfg.agent.max_turns)
    jax.monitoring.register_event_duration_secs_listener(_on_event)
    ctx = S.build_context(cfg, args.workdir)
    tasks = ctx.eval_tasks[:args.tasks]
    params = ctx.load_base_params()
    print(f"SmolLM2 held-out rollout: {len(tasks)} tasks x 1, mode={args.mode}, replan={cfg.agent.replan}, "
          f"max_turns={max_turns}, plan/action tokens {cfg.agent.max_plan_tokens}/{cfg.agent.max_action_tokens}, "
          f"T={cfg.eval.temperature} top_p={cfg.eval.top_p}, num_cohorts={cfg.rollout.num_cohorts}, "
          f"dtype={cfg.model.dtype}; cpus={os.cpu_count()}")
    t = time.perf_counter()
    _, _, wc, ws = run_eval(ctx, params, tasks, args.mode, args.warmup_turns)
    print(f"warm-up ({args.warmup_turns} turns): {time.perf_counter() - t:.1f} s, {wc} compiles ({ws:.1f} s compiling)")
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    batch, engine, compiles, compile_s = run_eval(ctx, params, tasks, args.mode, max_turns)
    print(report(batch, engine, compiles, compile_s, args.target, uptime))
    print(f"load after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
