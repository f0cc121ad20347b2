"""PPO step tokens/s of our jitted `ppo_step` vs a plain torch PPO update on the same weights and CPU.

    python benchmarks/bench_ppo_step.py [--model demo|tiny|smollm2] [--batch 16] [--seq 512 1024] [--micro 1]
        [--attention xla xla_flash] [--attention-chunk 64 128]

Each (`--attention`, `--attention-chunk`) pair is one row per length: our causal attention
(`model.attention_impl`) in blocks of that many queries (0 = one block), each timed interleaved
with the torch peer (SDPA). The process runs with `pilotrl_jax.host_memory` applied (freed memory
kept for reuse), which speeds up both; the header says whether it was.

The torch peer is transformers' LlamaForCausalLM doing the same update: forward, log-probs at the
sampling temperature, PPO clipped surrogate (dual-clip, token-mean), backward, grad-norm clip 1.0,
AdamW. Both do one mini-batch, one epoch. MFU is against a float32 matmul peak measured first
(the larger of jax's and torch's). Prints a table with the ratio ours/torch from the same run.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from pilotrl_jax import host_memory
from pilotrl_jax.models import hf_io
from pilotrl_jax.rl import ppo
from common import model_dir


def _best_time(fn, reps):
    """Warm up once, then the best wall time of `reps` runs."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _interleaved_best(fa, fb, reps):
    """Best wall times of fa and fb, run alternately (warm-up first) so load drift hits both alike."""
    fa()
    fb()
    ta = tb = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fa()
        ta = min(ta, time.perf_counter() - t)
        t = time.perf_counter()
        fb()
        tb = min(tb, time.perf_counter() - t)
    return ta, tb


def matmul_peak(n: int = 1024, reps: int = 5) -> tuple[float, float]:
    """Measured float32 matmul FLOP/s of (jax, torch) on an n x n x n product, 8 chained per call."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32) / np.sqrt(n)

    @jax.jit
    def chain(x):
        for _ in range(8):
            x = x @ a
        return x

    tj = _best_time(lambda: chain(a).block_until_ready(), reps)
    ta_ = torch.tensor(np.asarray(a))

    def tchain():
        x = ta_
        for _ in range(8):
            x = x @ ta_
        return x

    tt = _best_time(tchain, reps)
    flops = 8 * 2 * n**3
    return flops / tj, flops / tt


def train_flops_per_token(c, seq: int) -> float:
    """Forward+backward FLOPs per token: 6 x matmul params (no embedding lookup) + attention scores/values."""
    d, f, v, L = c.hidden_size, c.intermediate_size, c.vocab_size, c.num_layers
    dense = L * (d * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads) + 3 * d * f) + d * v
    attn = L * 2 * 2 * seq * c.num_heads * c.head_dim  # q.k and p.v per token, full (non-causal) count
    return 3 * (2 * dense + attn)


def _batch(vocab, B, T, seed=0):
    """A synthetic PPO batch: prompt half untrained, response half trained, random advantages."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, (B, T)).astype(np.int32)
    lm = np.zeros((B, T), np.float32)
    lm[:, T // 2:] = 1
    return dict(input_ids=ids, attention_mask=np.ones((B, T), np.int32), loss_mask=lm,
                advantages=(rng.normal(size=(B, T)) * lm).astype(np.float32),
                old_logprobs=np.full((B, T), -7.0, np.float32) * lm)


def torch_ppo_step_fn(model, cfg: ppo.PPOConfig, batch: dict, n_micro: int, device: str = "cpu",
                      autocast_dtype=None):
    """A plain torch PPO update (the peer), closed over one batch; on `device`, under autocast to
    `autocast_dtype` when given (mixed precision: float32 weights, bf16 matmuls), synchronised at the end."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.adam_b1, cfg.adam_b2), eps=cfg.adam_eps,
                            weight_decay=cfg.weight_decay)
    tb = {k: torch.tensor(v, device=device) for k, v in batch.items()}
    tb["input_ids"] = tb["input_ids"].long()
    den = tb["loss_mask"].sum()
    dev_type = torch.device(device).type

    def step():
        opt.zero_grad(set_to_none=True)
        for chunk in range(n_micro):
            sl = slice(chunk * len(tb["input_ids"]) // n_micro, (chunk + 1) * len(tb["input_ids"]) // n_micro)
            ids, m = tb["input_ids"][sl], tb["loss_mask"][sl][:, 1:]
            with torch.autocast(dev_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                logits = model(ids, attention_mask=tb["attention_mask"][sl], use_cache=False).logits.float()
            lp = torch.log_softmax(logits[:, :-1] / cfg.temperature, -1).gather(-1, ids[:, 1:, None])[..., 0]
            a, old = tb["advantages"][sl][:, 1:], tb["old_logprobs"][sl][:, 1:]
            r = torch.exp(torch.clamp(lp - old, -20, 20))
            loss = torch.maximum(-a * r, -a * torch.clamp(r, 1 - cfg.clip_eps_low, 1 + cfg.clip_eps_high))
            loss = torch.where(a < 0, torch.minimum(loss, -a * cfg.dual_clip), loss)
            ((loss * m).sum() / den).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        if dev_type == "cuda":
            torch.cuda.synchronize()

    return step


def main():
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo", choices=["demo", "tiny", "smollm2"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--micro", type=int, default=1, help="micro-batches per update (both implementations)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--attention", nargs="+", default=["xla", "xla_flash"], choices=["xla", "xla_flash"],
                    help="model.attention_impl values; one row each")
    ap.add_argument("--attention-chunk", type=int, nargs="+", default=[128],
                    help="queries per causal attention block (0 = one block: the full score matrix); one row each")
    args = ap.parse_args()

    pj, pt = matmul_peak()
    peak = max(pj, pt)
    path = model_dir(args.model)
    config, params = hf_io.load_hf(path)
    tmodel = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()
    cfg = ppo.PPOConfig(lr=1e-6, num_mini_batches=1, num_micro_batches=args.micro, shuffle=False)
    print(f"model={args.model} params={config.num_params / 1e6:.1f}M float32 batch={args.batch} micro={args.micro} "
          f"torch threads={torch.get_num_threads()} jax={jax.devices()[0].platform} "
          f"host_memory.keep_freed_memory={host_memory.applied()}")
    print(f"measured matmul peak: jax {pj / 1e9:.1f} GFLOP/s, torch {pt / 1e9:.1f} GFLOP/s (MFU uses {peak / 1e9:.1f})")
    print(f"{'seq':>5} {'attention':>9} {'chunk':>5} | {'ours tok/s':>10} {'ours MFU':>8} | {'torch tok/s':>11} "
          f"{'torch MFU':>9} | {'ratio':>6}")
    for T in args.seq:
        batch = _batch(config.vocab_size, args.batch, T)
        jb = jax.tree.map(jnp.asarray, batch)
        for impl, chunk in [(i, c) for i in args.attention for c in args.attention_chunk]:
            ccfg = config.replace(attention_query_chunk=chunk, attention_impl=impl)
            step = ppo.make_ppo_step(ccfg, cfg, donate=True)
            state = [ppo.init_train_state(ccfg, cfg, params, jax.random.PRNGKey(0))]

            def run_ours():
                state[0], m = step(state[0], jb)
                jax.block_until_ready(m)

            t_ours, t_torch = _interleaved_best(run_ours, torch_ppo_step_fn(tmodel, cfg, batch, args.micro), args.reps)
            n = args.batch * T
            fl = train_flops_per_token(config, T) * n
            print(f"{T:>5} {impl:>9} {chunk:>5} | {n / t_ours:>10.0f} {fl / t_ours / peak:>8.1%} | {n / t_torch:>11.0f} "
                  f"{fl / t_torch / peak:>9.1%} | {t_torch / t_ours:>6.2f}")


if __name__ == "__main__":
    main()
