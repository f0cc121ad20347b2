"""`make demo`: the main job on CPU, on its embedded default config (configs/demo.py).

Runs SFT warm start → PilotRL stage 1 → 2 → 3 on ALFWorld-engine tasks from the project's generator,
then writes under the output folder (default runs/demo/): checkpoints per stage, metrics (JSONL and
TensorBoard), curves.png, results.json (held-out success per model and mode), and an HF export of
the final model (hf/). Rerunning resumes; pass --fresh to start over.

    python -m pilotrl_jax.demo [--out runs/demo] [--fresh] [--config.x.y=value ...]
"""
from __future__ import annotations

import os
import shutil
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(_ROOT, "configs", "demo.py"), "Demo config.")
_OUT = flags.DEFINE_string("out", "runs/demo", "Output folder.")
_FRESH = flags.DEFINE_bool("fresh", False, "Delete the output folder first.")


def _check_resumable(out: str, cfg) -> None:
    """Refuse to resume a run folder written under another config (its finished stages would be reused)."""
    import json

    path = os.path.join(out, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        try:
            old = json.load(f)
        except ValueError:
            old = None
    if old != json.loads(cfg.to_json_best_effort()):
        raise SystemExit(f"{out} holds a run made with another config ({path} differs from this one), and resuming "
                         "would reuse its finished stages. Pass --fresh to start over there, or --out NEW_FOLDER.")


def main(argv):
    """Run the demo pipeline and write results.json, the HF export and the table."""
    del argv
    logging.set_verbosity(logging.WARNING)

    from pilotrl_jax import export
    from pilotrl_jax.experiments.results import rows_from_run, write_results
    from pilotrl_jax.train import config as C
    from pilotrl_jax.train.evaluation import format_table
    from pilotrl_jax.train.setup import use_compilation_cache
    from pilotrl_jax.train.trainer import run_pipeline

    out = os.path.abspath(_OUT.value)
    if _FRESH.value and os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    cfg = _CONFIG.value
    _check_resumable(out, cfg)
    use_compilation_cache(out)
    stages = C.pipeline(cfg)
    rl = f" / {cfg.env.num_rl_tasks} RL" if int(cfg.env.get("num_rl_tasks", 0)) else ""
    print(f"PilotRL demo: {' -> '.join(stages)} on {cfg.env.name} ({cfg.env.num_train_tasks} train{rl} / "
          f"{cfg.env.num_eval_tasks} held-out tasks); output in {out}", flush=True)
    result = run_pipeline(cfg, out)
    rows = rows_from_run(out, stages, cfg.seed)
    write_results(os.path.join(out, "results.json"), rows)
    final = result[stages[-1]]["final"]
    export.main(["--checkpoint", final, "--out", os.path.join(out, "hf")])
    print("\nHeld-out success (" + cfg.env.eval_split + " split):")
    print(format_table([dict(r, model=r["model"]) for r in rows]))
    print(f"\nresults: {os.path.join(out, 'results.json')}\ncurves:  {os.path.join(out, 'curves.png')}\n"
          f"HF model: {os.path.join(out, 'hf')}")
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
