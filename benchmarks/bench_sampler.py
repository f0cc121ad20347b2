"""Sampler benchmark (CPU): decode tokens/s vs transformers `generate`, and a 10-turn episode.

Prints three tables:
1. greedy generation of N new tokens from same-length prompts at batch 1/8/32, ours (jitted KV-cache
   engine, measured after a warm-up call that compiles) vs transformers `generate` on the same weights,
   with the ratio measured in this run;
2. a multi-turn episode batch (generate, append an observation, ... for 10 turns): tokens the model
   processed in total (prefill + decode) vs tokens in the final sequences (ideal 1.00), and wall time
   vs re-prefilling the whole history from scratch every turn;
3. milliseconds per decode step at batch 64 with 256/512/1024 cache slots, against one cached
   transformers forward per token.

Usage: python benchmarks/bench_sampler.py [--model smollm2|tiny] [--batches 1,8,32] [--new-tokens 64]
       [--windows 256,512,1024] [--scan-layers]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _load(model_name: str, scan_layers: bool = False):
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
    config, params = hf_io.load_hf(path, scan_layers=scan_layers)
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
    print("| batch | ours tok/s | transformers tok/s | ratio | ours compile+first call s | same tokens |")
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


def bench_decode_step(model, config, params, batch, windows, steps=32):
    """Table 3: milliseconds per decode step (one token for every row) with W-1 tokens cached.

    Ours: the engine's on-device decode loop over a cache of W slots (top-p 0.9 sampling), in the
    layout the engine decodes with (per layer; `engine.decode_config`); for a scanned model also the
    scanned kernel over one stacked cache (what the engine ran before it kept a per-layer copy).
    transformers: one cached forward of a token per row after a prefill of W-1 tokens (no sampling).
    """
    import jax
    import jax.numpy as jnp
    import torch

    from pilotrl_jax.sampling import engine as E

    variants = [("engine", E.decode_config(config), E.decode_params(config, params))]
    if config.scan_layers:
        variants.append(("scanned kernel", config, params))
    print(f"\n## decode step, batch {batch}, W-1 tokens cached, CPU (model loaded with "
          f"{'scanned' if config.scan_layers else 'unscanned'} layers)")
    print("| cache slots W | " + " | ".join(f"{n} ms/step" for n, _, _ in variants)
          + " | transformers ms/step | " + " | ".join(f"{n} vs torch" for n, _, _ in variants) + " |")
    print("|---|" + "---|" * (2 * len(variants) + 1))
    for W in windows:
        V = config.vocab_size
        state = dict(tok=jnp.zeros(batch, jnp.int32), pos=jnp.full(batch, W - steps - 1, jnp.int32),
                     done=jnp.zeros(batch, bool), reason=jnp.zeros(batch, jnp.int32),
                     n_new=jnp.zeros(batch, jnp.int32), limit=jnp.full(batch, 1 << 30, jnp.int32),
                     keys=jnp.zeros((batch, 2), jnp.uint32))
        none = jnp.zeros(V, bool)
        args = (none, none, (jnp.float32(0.6), jnp.int32(0), jnp.float32(0.9)), jnp.int32(steps), jnp.int32(1 << 30))
        ours = []
        for _, cfg, prm in variants:
            cache = E.cache_structure(cfg, batch, W, jnp.float32, lambda shape, d, axes: jnp.zeros(shape, d))
            run = lambda c, cfg=cfg, prm=prm: E._decode(cfg, prm, c, state, *args, mode="top_p", chunk=steps, mesh=None)
            cache = run(cache)[0]
            jax.block_until_ready(cache)
            t = time.perf_counter()
            for _ in range(3):
                cache, _, out, _ = run(cache)
            jax.block_until_ready(out)
            ours.append((time.perf_counter() - t) / (3 * steps) * 1000)
        ids = torch.randint(3, V, (batch, W))
        with torch.no_grad():
            past = model(ids[:, :-1], use_cache=True).cache  # transformers 5.x names it `cache`
            model(ids[:, -1:], cache=past)  # warm-up (the cache grows by one slot)
            t = time.perf_counter()
            for i in range(steps):
                model(ids[:, -1:], cache=past)
            hf = (time.perf_counter() - t) / steps * 1000
        print(f"| {W} | " + " | ".join(f"{o:.1f}" for o in ours) + f" | {hf:.1f} | "
              + " | ".join(f"{hf / o:.2f}x" for o in ours) + " |", flush=True)


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
    ap.add_argument("--decode-batch", type=int, default=64)
    ap.add_argument("--windows", default="256,512,1024", help="cache slots for the decode-step table")
    ap.add_argument("--scan-layers", action="store_true", help="load the model with scanned layers (the decode-step table adds the scanned kernel)")
    args = ap.parse_args(argv)
    import jax

    model, config, params = _load(args.model, args.scan_layers)
    print(f"model {args.model}: {config.num_params / 1e6:.1f}M params; jax {jax.__version__} on "
          f"{jax.devices()[0].platform}, {os.cpu_count()} cores")
    bench_throughput(model, config, params, [int(b) for b in args.batches.split(",")], args.new_tokens,
                     args.prompt_len)
    bench_episode(config, params, args.episode_batch, args.turns, 24, 16, args.prompt_len)
    bench_decode_step(model, config, params, args.decode_batch, [int(w) for w in args.windows.split(",")])


if __name__ == "__main__":
    main()
