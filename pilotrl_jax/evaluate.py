"""Evaluate a checkpoint on held-out tasks and print a success table per task type.

    python -m pilotrl_jax.evaluate --checkpoint CKPT --config configs/demo.py [--workdir DIR]
        [--mode adaplan|react|adaplan,react] [--env alfworld] [--num_tasks 32] [--split heldout]

CKPT is a trainer checkpoint (`<stage>/checkpoints/final`, a step dir or a checkpoint root) or an HF
directory. The config gives the environment, agent limits and sampling settings (eval.temperature,
eval.top_p); WORKDIR holds generated games (default: the run folder the checkpoint belongs to).
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file (environment, agent, eval).")
_CKPT = flags.DEFINE_string("checkpoint", None, "Checkpoint or HF directory.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (games); default: inferred from --checkpoint.")
_MODE = flags.DEFINE_string("mode", "adaplan", "adaplan, react, or both comma-separated.")
_ENV = flags.DEFINE_string("env", None, "Override config.env.name.")
_N = flags.DEFINE_integer("num_tasks", None, "Held-out tasks to run (default config.eval.num_tasks).")
_SPLIT = flags.DEFINE_string("split", None, "Split (default config.env.eval_split).")
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")


def _run_dir(ckpt: str) -> str:
    """The run folder a trainer checkpoint lives in (WORKDIR/<stage>/checkpoints/...)."""
    parts = os.path.abspath(ckpt).split(os.sep)
    if "checkpoints" in parts:
        return os.sep.join(parts[: parts.index("checkpoints") - 1])
    return os.path.abspath(ckpt)


def main(argv):
    """CLI entry point."""
    del argv
    logging.set_verbosity(logging.WARNING)
    if _CONFIG.value is None or not _CKPT.value:
        print("usage: python -m pilotrl_jax.evaluate --checkpoint CKPT --config configs/FILE.py", file=sys.stderr)
        return 2
    from pilotrl_jax import export
    from pilotrl_jax.train import setup as S
    from pilotrl_jax.train.config import _split
    from pilotrl_jax.train.evaluation import evaluate, format_table

    cfg = _CONFIG.value
    if _ENV.value:
        cfg.env.name = _ENV.value
    if _SPLIT.value:
        cfg.env.eval_split = _SPLIT.value
    workdir = _WORKDIR.value or _run_dir(_CKPT.value)
    try:
        model_cfg, params, tok_dir = export.load_any(_CKPT.value)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if tok_dir is None:
        print(f"error: no tokenizer found with {_CKPT.value}; pass an HF dir or a trainer checkpoint", file=sys.stderr)
        return 2
    import transformers

    _, held = S.load_splits(cfg, workdir)
    ctx = S.RunContext(cfg=cfg, workdir=workdir, model_cfg=model_cfg,
                       tokenizer=transformers.AutoTokenizer.from_pretrained(tok_dir), mesh=None, train_tasks=[],
                       eval_tasks=held, env_factory=S.env_factory(cfg), base_path=_CKPT.value, base_is_hf=False)
    n = _N.value or int(cfg.eval.num_tasks)
    rows = []
    for mode in _split(_MODE.value):
        table, _ = evaluate(ctx, params, held[:n], mode=mode, group_size=int(cfg.eval.group_size))
        rows.append(dict(model=os.path.basename(os.path.normpath(_CKPT.value)), mode=mode, env=cfg.env.name, **table))
    print(f"env: {cfg.env.name}  split: {cfg.env.eval_split}")
    print(format_table(rows))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
