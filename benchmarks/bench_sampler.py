"""Sampler benchmark (CPU): decode tokens/s vs transformers `generate`, and a 10-turn episode.

Prints two tables:
1. greedy generation of N new tokens from same-length prompts at batch 1/8/32, ours (jitted KV-cache
   engine, measured after a warm-up call that compiles) vs transformers `generate` on the same weights,
   with the ratio measured in this run;
2. a multi-turn episode batch (generate, append an observation, ... for 10 turns): tokens the model
   processed in total (prefill + decode) vs tokens in the final sequences (ideal 1.00), and wall time
   vs re-prefilling the whole history from scratch every turn.

Usage: python benchmarks/bench_sampler.py [--model smollm2|tiny] [--batches 1,8,32] [--new-tokens 64]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _load(model_name: str):
    import torch
    import transformers

    from pilotrl_jax.models import hf_io

    if model_name == "smollm2":
        from pilotrl_jax.models.smollm2 import ensure_smollm2_hf

        path = ensure_smollm2_hf()
    else:
        import tempfile

        cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                       max_position_embeddings=2048, initializer_range=0.1, bos_token_id=1,
                                       eos_token_id=2, pad_token_id=0)
        torch.manual_seed(0)
        path = os.path.join(tempfile.mkdtemp(), "tiny")
        transformers.LlamaForCausalLM(cfg).eval().save_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    config, params = hf_io.load_hf(path, scan_layers=True)
    return model, config, params


def _hf_generate(model, prompts, n):
    import torch

    ids = torch.tensor(prompts)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=0)
    return out[:, ids.shape[1]:].tolist()


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_throughput(model, config, params, batches, n_new, prompt_len):
    """Table 1: tokens/s of ours vs transformers at each batch size."""
    from pilotrl_jax.sampling import generate

    rng = np.random.default_rng(0)
    print(f"\n## greedy decode, prompt {prompt_len} tokens, {n_new} new tokens, CPU")
    print(f"| batch | ours tok/s | transformers tok/s | ratio | ours compile+first call s | same tokens |")
    print("|---|---|---|---|---|---|")
    for B in batches:
        prompts = rng.integers(3, config.vocab_size, size=(B, prompt_len)).tolist()
        run = lambda: generate(config, params, prompts, n_new)
        _, first = _timed(run)
        ours, t_ours = _timed(run)
        _hf_generate(model, prompts, 2)  # warm-up
        ref, t_hf = _timed(lambda: _hf_generate(model, prompts, n_new))
        same = sum(r.tokens == h for r, h in zip(ours, ref))
        tps_o, tps_h = B * n_new / t_ours, B * n_new / t_hf
        print(f"| {B} | {tps_o:.1f} | {tps_h:.1f} | {tps_o / tps_h:.2f}x | {first:.1f} | {same}/{B} |", flush=True)


def bench_episode(config, params, batch, turns, gen_tokens, obs_tokens, prompt_len):
    """Table 2: a multi-turn episode batch, cached continuation vs re-prefilling the history every turn."""
    from pilotrl_jax.sampling import SamplerEngine

    rng = np.random.default_rng(1)
    prompts = rng.integers(3, config.vocab_size, size=(batch, prompt_len)).tolist()
    obs = [rng.integers(3, config.vocab_size, size=(batch, obs_tokens)).tolist() for _ in range(turns)]
    max_len = prompt_len + turns * (gen_tokens + obs_tokens) + 8

    def cached():
        eng = SamplerEngine(config, params, max_batch=batch, max_len=max_len, seed=0)
        hs = eng.start(prompts)
        for t in range(turns):
            eng.generate(hs, gen_tokens, temperature=1.0)
            if t < turns - 1:
                eng.append(hs, obs[t])
        return eng, [eng.tokens(h) for h in hs]

    def from_scratch():
        seqs = [list(p) for p in prompts]
        prefilled = 0
        for t in range(turns):
            eng = SamplerEngine(config, params, max_batch=batch, max_len=max_len, seed=0)
            hs = eng.start(seqs)
            eng.generate(hs, gen_tokens, temperature=1.0)
            prefilled += eng.stats["prefill_tokens"] + eng.stats["decode_tokens"]
            seqs = [eng.tokens(h) + (obs[t][i] if t < turns - 1 else []) for i, h in enumerate(hs)]
        return prefilled, seqs

    cached()  # compile
    (eng, seqs), t_cached = _timed(cached)
    from_scratch()  # compile
    (prefilled_scratch, seqs2), t_scratch = _timed(from_scratch)
    final = sum(len(s) for s in seqs)
    processed = eng.stats["prefill_tokens"] + eng.stats["decode_tokens"]
    print(f"\n## {turns}-turn episodes, batch {batch}: prompt {prompt_len}, {gen_tokens} generated + "
          f"{obs_tokens} observation tokens per turn, T=1.0")
    print("| mode | tokens processed | final sequence tokens | ratio | wall s |")
    print("|---|---|---|---|---|")
    print(f"| cached continuation (SamplerEngine) | {processed} | {final} | {processed / final:.2f} | {t_cached:.2f} |")
    print(f"| re-prefill history each turn | {prefilled_scratch} | {final} | {prefilled_scratch / final:.2f} "
          f"| {t_scratch:.2f} |")
    print(f"same sequences: {seqs == seqs2}; speed-up {t_scratch / t_cached:.2f}x; "
          f"overshoot tokens {eng.stats['overshoot_tokens']}")


def main(argv=None):
    """Run both benchmarks and print their tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--episode-batch", type=int, default=8)
    args = ap.parse_args(argv)
    import jax

    model, config, params = _load(args.model)
    print(f"model {args.model}: {config.num_params / 1e6:.1f}M params; jax {jax.__version__} on "
          f"{jax.devices()[0].platform}, {os.cpu_count()} cores")
    bench_throughput(model, config, params, [int(b) for b in args.batches.split(",")], args.new_tokens,
                     args.prompt_len)
    bench_episode(config, params, args.episode_batch, args.turns, 24, 16, args.prompt_len)


if __name__ == "__main__":
    main()
