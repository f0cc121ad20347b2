"""Forward tokens/s of our Flax LLaMA vs transformers (torch) on the same weights and CPU.

    python benchmarks/bench_forward.py [--model smollm2|tiny] [--batch 1 8] [--seq 128 512]
Prints a table with the ratio ours/torch measured in the same run.
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import torch
import transformers

from pilotrl_jax.models import hf_io, llama
from common import model_dir


def _time(fn, reps):
    fn()  # warm-up / compile
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main():
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--seq", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    path = model_dir(args.model)
    config, params = hf_io.load_hf(path, dtype=args.dtype)
    tmodel = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    fwd = jax.jit(lambda p, x: llama.forward(config, p, x))
    print(f"model={args.model} params={config.num_params / 1e6:.1f}M dtype={args.dtype} "
          f"cpu threads: torch={torch.get_num_threads()} jax devices={jax.devices()}")
    print(f"{'batch':>5} {'seq':>5} | {'ours tok/s':>11} {'torch tok/s':>11} | {'ratio':>6}")
    for b in args.batch:
        for s in args.seq:
            ids = np.random.default_rng(0).integers(3, config.vocab_size, size=(b, s)).astype(np.int32)
            t_ours = _time(lambda: fwd(params, ids).block_until_ready(), args.reps)
            tid = torch.tensor(ids, dtype=torch.long)

            def run_torch():
                with torch.inference_mode():
                    tmodel(tid, use_cache=False)

            t_torch = _time(run_torch, args.reps)
            n = b * s
            print(f"{b:>5} {s:>5} | {n / t_ours:>11.0f} {n / t_torch:>11.0f} | {t_torch / t_ours:>6.2f}")


if __name__ == "__main__":
    main()
