"""The evidence table: held-out success of warm start (ReAct, AdaPlan), + stage 1, + stage 2,
+ stage 3, and stage 3 alone, over several seeds, with the spread.

    python -m pilotrl_jax.experiments.table --seeds 0,1,2 [--out runs/table] [--config configs/demo.py]
        [--pipeline ablation|config]

With `--pipeline ablation` (default) each seed runs sft,stage1,stage2,stage3,stage3_only (same budget
per seed; the SFT demonstrations include both AdaPlan and ReAct turns so the warm start can be
evaluated in both modes); with `--pipeline config` each seed runs the config as it is (for
configs/demo.py: exactly `make demo` with another seed). Runs go to OUT/seed_<k>; results are written
to OUT/results.json and printed as mean ± std, with each stage's gain over the warm start.
"""
from __future__ import annotations

import collections
import os
import sys

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(_ROOT, "configs", "demo.py"), "Base config.")
_OUT = flags.DEFINE_string("out", "runs/table", "Output folder.")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds.")
_PIPELINE = flags.DEFINE_enum("pipeline", "ablation", ["ablation", "config"],
                              "ablation: every stage and stage 3 alone; config: the config's own pipeline.")

ORDER = [("warm_start", "react"), ("warm_start", "adaplan"), ("stage1", "adaplan"), ("stage2", "adaplan"),
         ("stage3", "adaplan"), ("stage3_only", "adaplan")]


def table_config(cfg, seed: int):
    """The per-seed config: the full ablation pipeline, SFT on both formats, eval in both modes."""
    cfg = cfg.copy_and_resolve_references()
    cfg.unlock()
    cfg.seed = int(seed)
    cfg.pipeline = "sft,stage1,stage2,stage3,stage3_only"
    cfg.stages.sft.mode = "adaplan,react"
    cfg.eval.modes = "adaplan"
    cfg.stages.sft.eval_modes = "adaplan,react"  # the warm start in both modes; the RL stages train AdaPlan
    cfg.eval.stages = ""  # every stage of the ablation pipeline
    cfg.stages.stage3_only.steps = cfg.stages.stage3.steps
    cfg.stages.stage3_only.lr = cfg.stages.stage3.lr
    return cfg


def _seeded(cfg, seed: int):
    """The config as it is, with `seed` (the `--pipeline config` run of one seed)."""
    cfg = cfg.copy_and_resolve_references()
    cfg.seed = int(seed)
    return cfg


def _mean_std(v) -> tuple[float, float]:
    """Mean and sample std (ddof 1; 0 for one value)."""
    v = np.asarray(v, np.float64)
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else 0.0)


def summarize(rows: list[dict]) -> list[dict]:
    """Mean, sample std (ddof 1) and per-seed values of success per (model, mode), in the table's order;
    `gain` (mean, std) is the paired per-seed difference to the warm start in the same mode, where both ran."""
    by = collections.defaultdict(dict)
    for r in rows:
        by[(r["model"], r["mode"])][r["seed"]] = r["success_rate"]
    out = []
    for key in ORDER + sorted(set(by) - set(ORDER)):
        if key in by:
            seeds = sorted(by[key])
            v = [by[key][s] for s in seeds]
            mean, std = _mean_std(v)
            row = {"model": key[0], "mode": key[1], "mean": mean, "std": std, "seeds": len(v), "values": v,
                   "seed_ids": seeds}
            base = by.get(("warm_start", key[1]), {})
            paired = [by[key][s] - base[s] for s in seeds if s in base]
            if key[0] != "warm_start" and paired:
                row["gain"] = _mean_std(paired)
            out.append(row)
    return out


def format_summary(summary: list[dict]) -> str:
    """Plain-text table: success % mean ± sample std over seeds, the gain over the warm start, per-seed values."""
    lines = [f"{'model':<14} {'mode':<8} {'success % (mean ± std)':>24} {'gain (points)':>15} {'seeds':>6}  per seed",
             "-" * 96]
    for s in summary:
        gain = f"{s['gain'][0] * 100:+.1f} ± {s['gain'][1] * 100:.1f}" if "gain" in s else ""
        per = " / ".join(f"{x * 100:.1f}" for x in s["values"])
        lines.append(f"{s['model']:<14} {s['mode']:<8} {s['mean'] * 100:>15.1f} ± {s['std'] * 100:<5.1f} {gain:>15} "
                     f"{s['seeds']:>6}  {per}")
    return "\n".join(lines)


def main(argv):
    """Run every seed (resuming finished ones) and print the table."""
    del argv
    logging.set_verbosity(logging.WARNING)

    from pilotrl_jax.experiments.results import rows_from_run, write_results
    from pilotrl_jax.train import config as C
    from pilotrl_jax.train.setup import use_compilation_cache
    from pilotrl_jax.train.trainer import run_pipeline

    out = os.path.abspath(_OUT.value)
    use_compilation_cache(out)
    rows = []
    for seed in [int(s) for s in _SEEDS.value.split(",") if s.strip()]:
        cfg = table_config(_CONFIG.value, seed) if _PIPELINE.value == "ablation" else _seeded(_CONFIG.value, seed)
        wd = os.path.join(out, f"seed_{seed}")
        run_pipeline(cfg, wd)
        rows += rows_from_run(wd, C.pipeline(cfg), seed)
    write_results(os.path.join(out, "results.json"), rows)
    summary = summarize(rows)
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
