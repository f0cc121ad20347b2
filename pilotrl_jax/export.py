"""Export a checkpoint (trainer/Orbax params, or an HF directory) as an HF directory.

    python -m pilotrl_jax.export --checkpoint CKPT_DIR --out HF_DIR [--tokenizer DIR] [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import os
import sys

from pilotrl_jax.models import hf_io, param_store


def load_any(path: str):
    """(config, params, tokenizer dir or None) from an HF directory or an Orbax params checkpoint."""
    if os.path.exists(os.path.join(path, "config.json")) and (
        os.path.exists(os.path.join(path, "model.safetensors"))
        or os.path.exists(os.path.join(path, "model.safetensors.index.json"))
    ):
        config, params = hf_io.load_hf(path)
        return config, params, path
    config, params = param_store.load_params(path)
    params_dir, cfg_file = param_store.resolve_params_dir(path)
    tok_dir = None
    for d in (os.path.dirname(params_dir), os.path.dirname(cfg_file), os.path.dirname(os.path.dirname(cfg_file))):
        if os.path.exists(os.path.join(d, "tokenizer", "tokenizer.json")):
            tok_dir = os.path.join(d, "tokenizer")
            break
    return config, params, tok_dir


def main(argv=None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="trainer checkpoint dir/root, params dir or HF dir")
    ap.add_argument("--out", required=True, help="output HF directory")
    ap.add_argument("--tokenizer", default=None, help="tokenizer directory to copy (default: found with the checkpoint)")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="dtype of the written weights")
    ap.add_argument("--max-shard-gb", type=float, default=2.0)
    args = ap.parse_args(argv)
    try:
        config, params, tok_dir = load_any(args.checkpoint)
    except (FileNotFoundError, hf_io.CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tokenizer = None
    tok_dir = args.tokenizer or tok_dir
    if tok_dir:
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(tok_dir)
    out = hf_io.save_hf(config, params, args.out, tokenizer=tokenizer, dtype=args.dtype,
                        max_shard_bytes=int(args.max_shard_gb * 1024**3))
    print(f"wrote HF directory {out} ({config.num_params / 1e6:.1f}M params)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
