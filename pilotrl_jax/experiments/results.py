"""results.json rows from a finished pipeline run (one row per evaluated model, mode and seed)."""
from __future__ import annotations

import json
import os
from typing import Iterable

# pipeline stage name -> the model name results.json uses
MODEL_NAMES = {"sft": "warm_start", "stage1": "stage1", "stage2": "stage2", "stage3": "stage3",
               "stage3_only": "stage3_only"}


def rows_from_run(workdir: str, stages: Iterable[str], seed: int) -> list[dict]:
    """Read each stage's eval.json under `workdir` into results.json rows."""
    rows = []
    for stage in stages:
        path = os.path.join(workdir, stage, "eval.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for r in json.load(f):
                rows.append({"model": MODEL_NAMES.get(stage, stage), "mode": r["mode"], "seed": int(seed),
                             "split": "heldout", "success_rate": float(r["success_rate"]),
                             "episodes": int(r["episodes"]), "per_type": r.get("per_type", {}),
                             "pass_at_k": float(r.get("pass_at_k", 0.0)),
                             "samples_per_task": int(r.get("samples_per_task", 0)),
                             "success_std_over_samples": float(r.get("success_std_over_samples", 0.0)),
                             "format_error_rate": float(r.get("format_error_rate", 0.0)),
                             "format_errors_per_episode": float(r.get("format_errors_per_episode", 0.0))})
    return rows


def write_results(path: str, rows: list[dict]) -> str:
    """Write {"runs": rows} (the schema `make demo` promises) to `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"runs": rows}, f, indent=2)
    return path
