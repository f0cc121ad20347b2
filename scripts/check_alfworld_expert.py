"""Check that ALFWorld's experts solve a whole generated split; print solve rates and timings.

    python scripts/check_alfworld_expert.py --out /tmp/alfworld_games --split train --n-train 300 --n-heldout 100

- planner: AlfWorldEnv.expert_actions() (fast-downward) from the start, executed on the engine;
  re-planned once from a perturbed state (a few random admissible actions first) with --perturb.
- handcoded (--handcoded): ALFWorld's own HandCodedTWAgent through its AlfredExpert wrapper, as
  `alfworld-generate` runs it (heuristic explorer; not required to reach 99%).
Exit status 1 when the planner solve rate is below --min-rate.
"""
from __future__ import annotations

import argparse
import collections
import random
import sys
import time

from pilotrl_jax.envs.alfworld_env import AlfWorldEnv
from pilotrl_jax.envs.alfworld_gen import generate_tasks


def run_planner(env: AlfWorldEnv, task, perturb: int, rng: random.Random) -> tuple[bool, int]:
    """Reset, optionally take `perturb` random admissible actions, then follow the planner; (won, steps)."""
    obs, info = env.reset(task)
    steps = 0
    for _ in range(perturb):
        res = env.step(rng.choice(info["admissible_actions"]))
        info = res.info
        steps += 1
        if info["won"]:
            return True, steps
    plan = env.expert_actions()
    if plan is None:
        return False, steps
    for action in plan:
        res = env.step(action)
        steps += 1
        if res.done:
            break
    return bool(env._won), steps


def run_handcoded(game_file: str, max_steps: int = 150) -> bool:
    """ALFWorld's handcoded expert on the game through the engine's own wrappers."""
    import textworld
    from textworld.envs import PddlEnv
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredExpert, AlfredExpertType, AlfredInfos

    env = PddlEnv(textworld.EnvInfos(admissible_commands=True, won=True, extras=["gamefile"]))
    env = AlfredExpert(AlfredInfos(AlfredDemangler(env, shuffle=False)), expert_type=AlfredExpertType.HANDCODED)
    try:
        env.load(game_file)
        state = env.reset()
        for _ in range(max_steps):
            state, _, done = env.step(state["extra.expert_plan"][0])
            if done:
                return bool(state["won"])
        return False
    except Exception:
        return False


def main(argv=None) -> int:
    """Generate (or reuse) games, run the experts on one split, print a table; exit 1 below --min-rate."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/tmp/pilotrl_alfworld_games")
    p.add_argument("--n-train", type=int, default=300)
    p.add_argument("--n-heldout", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train", choices=["train", "heldout"])
    p.add_argument("--limit", type=int, default=0, help="check only the first N tasks (0: all)")
    p.add_argument("--perturb", type=int, default=0, help="random admissible actions before planning")
    p.add_argument("--handcoded", action="store_true", help="also run ALFWorld's handcoded expert")
    p.add_argument("--min-rate", type=float, default=0.99)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    tasks = generate_tasks(args.out, args.n_train, args.n_heldout, args.seed)[args.split]
    gen_s = time.perf_counter() - t0
    if args.limit:
        tasks = tasks[: args.limit]
    rng = random.Random(args.seed)
    env = AlfWorldEnv()
    solved, hc_solved, total = collections.Counter(), collections.Counter(), collections.Counter()
    failures = []
    steps_sum = 0
    t1 = time.perf_counter()
    expert_s = 0.0
    for task in tasks:
        total[task.task_type] += 1
        e0 = time.perf_counter()
        won, steps = run_planner(env, task, args.perturb, rng)
        expert_s += time.perf_counter() - e0
        steps_sum += steps
        if won:
            solved[task.task_type] += 1
        else:
            failures.append(task.task_id)
        if args.handcoded and run_handcoded(task.payload["game_file"]):
            hc_solved[task.task_type] += 1
    wall = time.perf_counter() - t1
    env.close()

    n, k = sum(total.values()), sum(solved.values())
    print(f"split={args.split} tasks={n} generation={gen_s:.2f}s episodes={wall:.1f}s")
    header = f"{'task_type':34s} {'n':>4s} {'planner':>8s}" + (f" {'handcoded':>10s}" if args.handcoded else "")
    print(header)
    for tt in sorted(total):
        row = f"{tt:34s} {total[tt]:4d} {solved[tt] / total[tt]:8.1%}"
        if args.handcoded:
            row += f" {hc_solved[tt] / total[tt]:10.1%}"
        print(row)
    rate = k / max(n, 1)
    row = f"{'ALL':34s} {n:4d} {rate:8.1%}"
    if args.handcoded:
        row += f" {sum(hc_solved.values()) / max(n, 1):10.1%}"
    print(row)
    tm = env.timings
    print(f"mean steps/episode {steps_sum / max(n, 1):.1f}; load {tm['load_s'] / max(tm['n_load'], 1) * 1e3:.0f} ms/game, "
          f"reset {tm['reset_s'] / max(tm['n_reset'], 1) * 1e3:.0f} ms, step {tm['step_s'] / max(tm['n_step'], 1) * 1e3:.1f} ms")
    if failures:
        print("planner failures:", " ".join(failures[:20]))
    return 0 if rate >= args.min_rate else 1


if __name__ == "__main__":
    sys.exit(main())
