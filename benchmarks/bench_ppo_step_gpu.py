"""PPO step on one GPU: our jitted `ppo_step` per attention kernel vs transformers' torch LlamaForCausalLM.

    JAX_PLATFORMS=cuda python benchmarks/bench_ppo_step_gpu.py [--model llama1b|tiny] [--batch 2] [--seq 8192]
        [--rows cudnn:none xla:full cudnn:full xla_flash:none] [--chunk 512] [--reps 3] [--autotune-level 0]

The model has random weights in Llama-3.2-1B's shapes (`llama1b`: 1.24B parameters, 16 layers, hidden 2048,
GQA 32/8 heads of 64, vocabulary 128256, tied embeddings) or a small stand-in (`tiny`, to try the script
on CPU). Both sides train in mixed precision: float32 weights and AdamW state, bfloat16 matmuls (ours
`model.dtype=bfloat16`; torch under `torch.autocast`). Both do one PPO update (forward, log-probs at the
sampling temperature, dual-clip surrogate, backward, grad-norm clip, AdamW) on the same synthetic batch.

Each `--rows` entry is `attention_impl:remat_policy`: one row of ours (`xla` and `xla_flash` run in blocks of
`--chunk` queries). Ours is compiled ahead of time and its XLA memory estimate printed before it runs. The
torch peer (SDPA attention, which picks flash attention on the GPU) runs first, in this process, and its
memory is released before ours starts (the two do not fit side by side at 8K-token rows); each row of ours
then runs in a fresh child process (one row's leftovers split the GPU allocator's free space, and the next
row's 50 GiB of temporaries did not fit); the GPU runs nothing else. `--autotune-level 0` turns XLA's GEMM
autotuning off for a faster compile, but its default GEMMs are slow: the cudnn row took 6.4 s instead of
0.35 s (2026-12-04). To shorten the xla rows' compile keep autotuning and set
XLA_FLAGS=--xla_gpu_enable_triton_gemm=false (cuBLAS only: 74 s). MFU is against the bf16 matmul peak
measured at the start (8192^3 products) and against the datasheet figure given by --peak-tflops; FLOPs
count 6 x matmul parameters per token plus the attention scores and values in full (non-causal), as
bench_ppo_step.py does.

A check row compares the mean next-token log-prob of torch and ours on the batch's first row (bf16 both:
they agree to about 1e-2), so the two sides are known to compute the same model.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch runs in the same process first

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from bench_ppo_step import _batch, _best_time, torch_ppo_step_fn, train_flops_per_token  # noqa: E402
from pilotrl_jax.models import hf_io, llama  # noqa: E402
from pilotrl_jax.models.config import LlamaConfig  # noqa: E402
from pilotrl_jax.rl import metrics as M  # noqa: E402
from pilotrl_jax.rl import ppo  # noqa: E402

MODELS = {
    # Llama-3.2-1B's shapes (random weights)
    "llama1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
                    num_kv_heads=8, head_dim=64, rope_theta=500000.0, rope_scaling=("llama3", 32.0, 1.0, 4.0, 8192),
                    max_position_embeddings=131072, tie_word_embeddings=True, bos_token_id=1, eos_token_ids=(2,)),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                 head_dim=16, max_position_embeddings=4096, bos_token_id=1, eos_token_ids=(2,)),
}


def bf16_matmul_peak(n: int = 8192, reps: int = 5) -> tuple[float, float]:
    """Measured bf16 matmul FLOP/s of (torch, jax): 4 chained n x n x n products per call (random data
    scaled by 1/sqrt(n); chained so that XLA cannot merge them into one)."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16) / n**0.5

    def tmm():
        y = a
        for _ in range(4):
            y = y @ a
        if dev == "cuda":
            torch.cuda.synchronize()

    tt = _best_time(tmm, reps)
    x = (jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32) / n**0.5).astype(jnp.bfloat16)

    @jax.jit
    def chain(x):
        y = x
        for _ in range(4):
            y = y @ x
        return y

    tj = _best_time(lambda: jax.block_until_ready(chain(x)), reps)
    flops = 4 * 2 * n**3
    return flops / tt, flops / tj


def mean_logprob_torch(model, ids: np.ndarray, device: str) -> float:
    """Mean next-token log-prob of one row under torch (bf16 autocast)."""
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        t = torch.tensor(ids[None], device=device).long()
        lp = torch.log_softmax(model(t, use_cache=False).logits.float()[:, :-1], -1)
        return float(lp.gather(-1, t[:, 1:, None]).mean())


def mean_logprob_ours(config: LlamaConfig, params, ids: np.ndarray) -> float:
    """Mean next-token log-prob of one row under our model (the config's dtype)."""
    f = jax.jit(lambda p, x: jnp.take_along_axis(
        jax.nn.log_softmax(llama.forward(config, p, x, attention_mask=jnp.ones_like(x))[:, :-1], -1),
        x[:, 1:, None], -1).mean())
    return float(f(params, jnp.asarray(ids[None])))


_RESULT = "RESULT "


def _ppo_config() -> ppo.PPOConfig:
    """The update both sides do: one mini-batch, one micro-batch, no shuffling."""
    return ppo.PPOConfig(lr=1e-6, num_mini_batches=1, num_micro_batches=1, shuffle=False)


def run_worker_row(args) -> dict:
    """One row of ours in this process: load the saved weights, compile the PPO step ahead of time, time it."""
    impl, _, remat = args.worker_row.partition(":")
    config, params = hf_io.load_hf(args.weights, dtype="bfloat16", param_dtype="float32", scan_layers=True)
    config = config.replace(remat_policy=remat, attention_impl=impl, attention_query_chunk=args.chunk)
    batch = _batch(config.vocab_size, args.batch, args.seq)
    out = {"logprob": mean_logprob_ours(config, params, batch["input_ids"][0])}
    jb = jax.tree.map(jnp.asarray, batch)
    pc = _ppo_config()
    step = ppo.make_ppo_step(config, pc, donate=True)
    state = ppo.init_train_state(config, pc, params, jax.random.PRNGKey(0))
    del params
    opts = None if args.autotune_level is None else {"xla_gpu_autotune_level": args.autotune_level}
    t0 = time.perf_counter()
    compiled = step.jitted.lower(state, jb).compile(compiler_options=opts)
    out["compile_s"] = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    out["temp_gib"] = getattr(ma, "temp_size_in_bytes", float("nan")) / 2**30 if ma is not None else float("nan")
    box = [state]

    def run():
        box[0], m = compiled(box[0], jb)
        jax.block_until_ready(m)
        return m

    out["policy_loss"] = float(M.finalize(run()).get("policy_loss", float("nan")))
    out["step_s"] = _best_time(run, args.reps)
    return out


def main():
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama1b", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--rows", nargs="+", default=["cudnn:none", "xla:full", "cudnn:full", "xla_flash:none"],
                    help="attention_impl:remat_policy, one row of ours each")
    ap.add_argument("--chunk", type=int, default=512, help="queries per block for the xla and xla_flash rows")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="datasheet dense bf16 peak (H100/H200 SXM)")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch peer")
    ap.add_argument("--autotune-level", type=int, default=None,
                    help="XLA's GPU GEMM autotuning level for our rows (0 = off: cuBLAS heuristics, faster compile; "
                         "default: XLA's own)")
    ap.add_argument("--worker-row", help=argparse.SUPPRESS)  # internal: run one row of ours in this process
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_row:
        print(_RESULT + json.dumps(run_worker_row(args)), flush=True)
        return
    for r in args.rows:
        impl, _, remat = r.partition(":")
        if not remat:
            ap.error(f"--rows entry {r!r}: expected attention_impl:remat_policy, e.g. cudnn:none")
        LlamaConfig.tiny(attention_impl=impl, remat_policy=remat)  # refuses unknown names now, not after torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tp, jp = bf16_matmul_peak(8192 if device == "cuda" else 512)
    peak = max(tp, jp)
    base = LlamaConfig(**MODELS[args.model])
    B, T = args.batch, args.seq
    batch = _batch(base.vocab_size, B, T)
    pc = _ppo_config()
    fl_step = train_flops_per_token(base, T) * B * T
    print(f"model={args.model} params={base.num_params / 1e9:.3f}B batch={B} seq={T} tokens/step={B * T} "
          f"jax={jax.__version__} ({jax.devices()[0].device_kind}) torch={torch.__version__} "
          f"transformers={transformers.__version__} device={device}"
          + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))
    print(f"bf16 matmul peak measured: torch {tp / 1e12:.0f} TFLOP/s, jax {jp / 1e12:.0f} TFLOP/s "
          f"(MFU uses {peak / 1e12:.0f}; datasheet {args.peak_tflops:.0f}); step FLOPs {fl_step / 1e12:.1f} T",
          flush=True)
    header = (f"{'impl':>10} {'remat':>6} | {'compile s':>9} {'XLA temp GiB':>12} | {'step s':>7} {'tok/s':>8} "
              f"{'MFU meas':>8} {'MFU sheet':>9} | {'vs torch':>8}")
    rows_out = []

    # --- the torch peer first (random init, saved so ours loads the very same weights)
    path = tempfile.mkdtemp()
    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(**base.to_hf_dict())
    with torch.device(device):
        tmodel = transformers.LlamaForCausalLM(hf_cfg).float()
    tmodel.save_pretrained(path)
    t_torch = None
    lp_torch = mean_logprob_torch(tmodel.eval(), batch["input_ids"][0], device)
    if not args.no_torch:
        try:
            tmodel.train()
            step = torch_ppo_step_fn(tmodel, pc, batch, 1, device=device, autocast_dtype=torch.bfloat16)
            t_torch = _best_time(step, args.reps)
            mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
            rows_out.append(f"{'torch sdpa':>10} {'none':>6} | {'':>9} {f'{mem:.1f} peak':>12} | {t_torch:>7.3f} "
                            f"{B * T / t_torch:>8.0f} {fl_step / t_torch / peak:>8.1%} "
                            f"{fl_step / t_torch / (args.peak_tflops * 1e12):>9.1%} | {1.0:>8.2f}")
            print(rows_out[-1], flush=True)
        except Exception:  # noqa: BLE001 - report the row and go on
            traceback.print_exc()
            rows_out.append(f"{'torch sdpa':>10} {'none':>6} | failed (see above)")
    del tmodel
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()

    # --- ours, one row per (attention_impl, remat_policy), each in a fresh process: after one row's step, the
    # allocator's free space is split, and the next row's 50 GiB of temporaries did not fit (2026-12-04)
    for r in args.rows:
        impl, _, remat = r.partition(":")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker-row", r, "--weights", path,
               "--model", args.model, "--batch", str(B), "--seq", str(T), "--chunk", str(args.chunk),
               "--reps", str(args.reps)]
        if args.autotune_level is not None:
            cmd += ["--autotune-level", str(args.autotune_level)]
        res = None
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout:
                if line.startswith(_RESULT):
                    res = json.loads(line[len(_RESULT):])
                else:
                    print(line, end="", flush=True)
        if res is None:
            rows_out.append(f"{impl:>10} {remat:>6} | failed (exit {proc.returncode}; see above)")
            continue
        if "logprob" in res:
            print(f"check: mean next-token log-prob of row 0: torch {lp_torch:.4f}, ours {res['logprob']:.4f} "
                  f"(ours with attention_impl={impl})", flush=True)
        t = res["step_s"]
        vs = f"{t_torch / t:>8.2f}" if t_torch else f"{'-':>8}"
        rows_out.append(f"{impl:>10} {remat:>6} | {res['compile_s']:>9.1f} {res['temp_gib']:>12.1f} | {t:>7.3f} "
                        f"{B * T / t:>8.0f} {fl_step / t / peak:>8.1%} "
                        f"{fl_step / t / (args.peak_tflops * 1e12):>9.1%} | {vs}")
        print(rows_out[-1] + f"   (first policy_loss {res['policy_loss']:.5f})", flush=True)

    print()
    print(header)
    for line in rows_out:
        print(line)


if __name__ == "__main__":
    main()
