"""Paged vs dense KV cache (CPU, same run): a rollout of mixed-length multi-turn episodes at a fixed cache memory.

The engines (dense; paged with paged_attention_impl xla and window) get the same token slots (dense:
--rows rows of --max-len slots; paged: the same slots as pages of --page-size, up to --paged-rows rows,
admission reserve --reserve tokens). A runner keeps as many episodes live as `num_free` allows, and
each round generates one turn (--turn tokens, greedy) for every live episode, appends an observation (--obs tokens), releases finished episodes and refills
from the queue (the rollout runner's loop). Episode lengths follow a skewed mix like ALFWorld's (most
solved in a few turns, some run to the turn limit): --short-frac of them take 2-6 turns, the rest
18-22 turns. Each engine runs the whole rollout once to compile, then again timed.

Prints: episodes/s, decode tokens/s, rounds, decode steps (passes over the weights: what bounds a large
model's decode on an accelerator, where a step costs about the same at 8 or 128 rows; on these CPU
cores a step's cost grows with its rows), mean live rows, preemptions, and whether every episode's
tokens equal the dense engine's.

Usage: python benchmarks/bench_paged.py [--episodes 48] [--rows 8] [--max-len 1024] [--paged-rows 64]
       [--page-size 16] [--reserve 0] [--turn 24] [--obs 16] [--short-frac 0.75] [--model tiny|wide|smollm2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def episodes(n: int, short_frac: float, vocab: int, seed: int = 0) -> list:
    """(prompt, turns, observations) per episode: prompts of 48-96 tokens, a skewed turn count."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt = [1] + rng.integers(3, vocab, size=int(rng.integers(47, 96))).tolist()
        turns = int(rng.integers(2, 7)) if rng.random() < short_frac else int(rng.integers(18, 23))
        out.append((prompt, turns))
    return out


def rollout(eng, eps, turn: int, obs: int, vocab: int) -> dict:
    """Run every episode to its turn count with the runner's refill loop; returns counts and tokens."""
    queue = list(range(len(eps)))
    live = {}  # handle -> [episode index, turns done]
    tokens, rounds, live_sum, gen_tokens = {}, 0, 0, 0
    t0 = time.perf_counter()
    while queue or live:
        n = min(len(queue), eng.num_free if live else max(1, eng.num_free))
        if n:
            idx, queue = queue[:n], queue[n:]
            for h, i in zip(eng.start([eps[i][0] for i in idx], seeds=idx), idx):
                live[h] = [i, 0]
        hs = sorted(live)
        res = eng.generate(hs, turn)
        rounds += 1
        live_sum += len(hs)
        done, more, obs_lists = [], [], []
        for h, r in zip(hs, res):
            gen_tokens += len(r.tokens)
            live[h][1] += 1
            if live[h][1] >= eps[live[h][0]][1]:
                done.append(h)
            else:
                more.append(h)
                # an episode's observations depend on it and its turn only (the same in both engines)
                rng = np.random.default_rng([live[h][0], live[h][1]])
                obs_lists.append(rng.integers(3, vocab, size=obs).tolist())
        for h in done:
            tokens[live[h][0]] = eng.tokens(h)
            del live[h]
        eng.release(done)
        if more:
            eng.append(more, obs_lists)
    wall = time.perf_counter() - t0
    return dict(wall=wall, rounds=rounds, mean_live=live_sum / max(rounds, 1), gen_tokens=gen_tokens, tokens=tokens,
                preemptions=int(eng.stats.get("preemptions", 0)), steps=int(eng.stats.get("decode_steps", 0)))


def wide_model():
    """A random 2-layer model whose weights (vocab 32000, hidden 1024: ~80M params) dominate a decode step,
    as an 8B model's do on an accelerator: (config, params)."""
    import jax

    from pilotrl_jax.models import llama
    from pilotrl_jax.models.config import LlamaConfig

    config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_layers=2, num_heads=8,
                         num_kv_heads=2, head_dim=128, dtype="float32", param_dtype="float32", scan_layers=False)
    return config, llama.init_params(config, jax.random.PRNGKey(0))


def main(argv=None):
    """Run the benchmark and print the table."""
    from benchmarks.bench_sampler import _load
    from pilotrl_jax.sampling import SamplerEngine
    from pilotrl_jax.sampling.paged import PagedSamplerEngine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", choices=["tiny", "wide", "smollm2"])
    ap.add_argument("--episodes", type=int, default=48)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--paged-rows", type=int, default=64)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--reserve", type=int, default=0, help="admission reserve per episode (0 = the mix's mean)")
    ap.add_argument("--turn", type=int, default=24)
    ap.add_argument("--obs", type=int, default=16)
    ap.add_argument("--short-frac", type=float, default=0.75)
    a = ap.parse_args(argv)
    if a.model == "wide":
        config, params = wide_model()
    else:
        _, config, params = _load(a.model)
    V = config.vocab_size
    eps = episodes(a.episodes, a.short_frac, V)
    lengths = np.array([len(p) + t * (a.turn + a.obs) for p, t in eps])
    if lengths.max() >= a.max_len:
        raise SystemExit(f"--max-len {a.max_len} is below the longest episode ({lengths.max()} tokens)")
    reserve = a.reserve or int(lengths.mean())
    slots = a.rows * a.max_len
    pages = slots // a.page_size
    print(f"model {a.model}; {a.episodes} episodes, {a.turn}-token turns + {a.obs}-token observations; lengths: "
          f"mean {lengths.mean():.0f}, p50 {np.median(lengths):.0f}, max {lengths.max()} tokens "
          f"({a.short_frac:.0%} of 2-6 turns, the rest 18-22); cache memory: {slots} token slots "
          f"(dense {a.rows} x {a.max_len}; paged {pages} pages of {a.page_size}, reserve {reserve})")

    def dense():
        return SamplerEngine(config, params, max_batch=a.rows, max_len=a.max_len, share_prefix=False)

    def paged(impl):
        return lambda: PagedSamplerEngine(config, params, max_batch=a.paged_rows, max_len=a.max_len, num_pages=pages,
                                          page_size=a.page_size, reserve_len=reserve, paged_attention_impl=impl)

    out = {}
    for name, make in (("dense", dense), ("paged-xla", paged("xla")), ("paged-window", paged("window"))):
        rollout(make(), eps, a.turn, a.obs, V)  # compiles every shape the timed run meets
        out[name] = rollout(make(), eps, a.turn, a.obs, V)
    print(f"{'cache':13} {'wall s':>8} {'episodes/s':>11} {'decode tok/s':>13} {'rounds':>7} {'decode steps':>13} "
          f"{'mean live rows':>15} {'preemptions':>12}")
    for name, r in out.items():
        print(f"{name:13} {r['wall']:8.2f} {len(eps) / r['wall']:11.2f} {r['gen_tokens'] / r['wall']:13.1f} "
              f"{r['rounds']:7d} {r['steps']:13d} {r['mean_live']:15.1f} {r['preemptions']:12d}")
    d = out["dense"]
    for name in ("paged-xla", "paged-window"):
        p = out[name]
        same = sum(d["tokens"][i] == p["tokens"][i] for i in range(len(eps)))
        print(f"{name} / dense: episodes/s x{d['wall'] / p['wall']:.2f}; episodes with the dense engine's tokens: "
              f"{same}/{len(eps)}")


if __name__ == "__main__":
    main()
