"""Rows per host a paged KV cache holds in the dense rollout cache's HBM (AOT byte counts; compiles nothing).

For a config and TPU topology (default: configs/tpu_llama31_8b.py on v5p-32), `aot.paged_rows_per_host`
takes the per-chip bytes the AOT report gives the dense rollout cache (rollout.max_batch rows of
agent.token_budget slots) and counts the rows a page pool of the same bytes holds for several episode
length mixes:
- alfworld-measured: the lengths of the SmolLM2 ALFWorld held-out episodes recorded in
  runs/smollm2_zero_shot/zero_shot_adaplan_expert_exemplar.jsonl (adaplan, expert exemplar, max_turns 8);
- alfworld-30-turns: the same episodes' per-turn tokens extended to the config's agent.max_turns (every
  episode runs all turns: an upper bound for ALFWorld at this config), plus their prompt;
- half-budget-uniform: lengths uniform on [prompt, token_budget] (a pessimistic mix: mean ~ 9K of 16K);
- all-at-budget: every episode at token_budget (the dense cache's own case).
Two counts: every row at its final length (no preemption ever needed), and the steady state of a
runner that refills rows as episodes end (a live episode holds on average its prompt and half the rest:
admission by `rollout.page_reserve_tokens` near that, preemption covering the excursions).

Usage: python benchmarks/paged_rows.py [--config configs/tpu_llama31_8b.py] [--topology v5p-32]
       [--page-size 16] [--lookahead 64]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
EPISODES = os.path.join(ROOT, "runs/smollm2_zero_shot/zero_shot_adaplan_expert_exemplar.jsonl")


def length_mixes(budget: int, max_turns: int, path: str = EPISODES, seed: int = 0) -> dict:
    """{name: (episode lengths, their prompt lengths)} for the mixes in the module doc (measured ones from
    `path`; a prompt's tokens estimated from its share of the episode's characters)."""
    recs = [json.loads(line) for line in open(path)]
    measured, extended, prompts = [], [], []
    for r in recs:
        total = sum(len(s.get("text", "")) for s in r["spans"])
        prompt = int(round(r["length"] * sum(len(s.get("text", "")) for s in r["spans"] if s["kind"] == "prompt")
                           / total))
        per_turn = (r["length"] - prompt) / max(1, r["num_turns"])
        measured.append(int(r["length"]))
        extended.append(min(budget, int(prompt + per_turn * max_turns)))
        prompts.append(prompt)
    rng = np.random.default_rng(seed)
    uniform = rng.integers(2048, budget + 1, size=1000).tolist()
    return {"alfworld-measured": (measured, prompts), "alfworld-30-turns": (extended, prompts),
            "half-budget-uniform": (uniform, [2048] * len(uniform)), "all-at-budget": ([budget], [2048])}


def main(argv=None):
    """Print the rows-per-host table."""
    from pilotrl_jax.aot import load_config, paged_rows_per_host

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=os.path.join(ROOT, "configs/tpu_llama31_8b.py"))
    ap.add_argument("--topology", default="v5p-32")
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--lookahead", type=int, default=64)
    ap.add_argument("--compile-rows", default="", help="also AOT-compile the paged decode loop (ragged kernel) at "
                    "these rows over the pool (comma-separated, e.g. 128,192), beside the dense decode at "
                    "rollout.max_batch rows ('' = no)")
    ap.add_argument("--compile-layers", type=int, default=0, help="layers of that compile (0 = the model's)")
    ap.add_argument("--compile-impl", default="ragged", help="paged_attention_impl of that compile")
    a = ap.parse_args(argv)
    cfg = load_config(a.config)
    budget, turns = int(cfg.agent.token_budget), int(cfg.agent.max_turns)
    print(f"{os.path.relpath(a.config, ROOT)} on {a.topology}: token_budget {budget}, max_turns {turns}, pages of "
          f"{a.page_size} tokens, {a.lookahead} slots of decode look-ahead per row")
    print(f"{'length mix':22} {'mean len':>9} {'p90 len':>8} {'prompt':>7} | {'at final length':^26} | "
          f"{'steady state (mean live)':^26}")
    print(f"{'':22} {'':>9} {'':>8} {'':>7} | {'pages/row':>10} {'rows/host':>9} {'x':>5} | {'pages/row':>10} "
          f"{'rows/host':>9} {'x':>5}")
    for name, (lengths, prompts) in length_mixes(budget, turns).items():
        r = paged_rows_per_host(cfg, a.topology, lengths, a.page_size, a.lookahead)
        # a live episode grows about linearly in time from its prompt to its final length: on average it
        # holds its prompt and half the rest (rows are refilled as episodes end)
        live = [p + (n - p) / 2 for n, p in zip(lengths, prompts)]
        s = paged_rows_per_host(cfg, a.topology, live, a.page_size, a.lookahead)
        print(f"{name:22} {np.mean(lengths):9.0f} {np.percentile(lengths, 90):8.0f} {np.mean(prompts):7.0f} | "
              f"{r['mean_pages']:10.1f} {r['rows']:9d} {r['ratio']:5.2f} | {s['mean_pages']:10.1f} {s['rows']:9d} "
              f"{s['ratio']:5.2f}")
    print(f"dense: {r['dense_rows']} rows/host x {r['window']} slots = {r['kv_bytes_per_chip'] / 2**30:.1f} GiB per chip"
          " "
          f"(sampler mesh {r['sampler_mesh']}, {r['token_bytes_per_chip'] / 1024:.0f} KiB per token per chip); "
          f"the same bytes as a pool: {r['pages']} pages")
    if a.compile_rows:
        compile_decode(cfg, a, r["pages"])


def compile_decode(cfg, a, pages: int) -> None:
    """AOT-compile the paged decode loop for one host's chips and print its memory per chip."""
    import dataclasses

    import jax.numpy as jnp

    from pilotrl_jax import aot, aot_compile

    devices = aot.topology_devices(a.topology)
    smesh = aot.sampler_mesh(cfg, devices, a.topology)
    mc = aot.model_config(cfg)
    if a.compile_layers:
        mc = dataclasses.replace(mc, num_layers=a.compile_layers)
    W = int(cfg.agent.token_budget)
    rows = [aot_compile.compile_decode(mc, smesh, int(cfg.rollout.max_batch), W, 64, params_dtype=jnp.bfloat16,
                                       label="dense ")]
    rows += [aot_compile.compile_paged_decode(mc, smesh, int(b), W, pages, a.page_size, 64, impl=a.compile_impl,
                                              params_dtype=jnp.bfloat16) for b in str(a.compile_rows).split(",")]
    gib = lambda x: f"{x / 2**30:.2f} GiB"
    for row in rows:
        print(f"{row.name} [{row.shape}, {mc.num_layers} layers] on {dict(smesh.shape)}: "
              + (f"error {row.error}" if row.error else
                 f"args {gib(row.args)}, outputs {gib(row.outputs)}, donated {gib(row.alias)}, temps "
                 f"{gib(row.temps)}, peak {gib(row.peak)} per chip; compiled in {row.compile_s:.0f} s"))


if __name__ == "__main__":
    main()
