"""Metrics: JSONL + TensorBoard writers (process 0 only) and PNG curves per stage."""
from __future__ import annotations

import json
import math
import os
from typing import Iterable, Optional

import jax


def _clean(v):
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f if math.isfinite(f) else None


class MetricsWriter:
    """Appends one JSON object per step to `metrics.jsonl` and mirrors scalars to TensorBoard."""

    def __init__(self, directory: str, tensorboard: bool = True):
        self.directory = directory
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(directory, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(directory, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(directory, "tb"))

    def write(self, step: int, metrics: dict, prefix: str = "") -> None:
        """Record `metrics` (flat dict of scalars) at `step`."""
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({f"{prefix}{k}": _clean(v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def truncate_after(self, step: int) -> None:
        """Drop rows past `step` (a resumed run rewrites them)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        rows = read_jsonl(self.path)
        with open(self.path, "w") as f:
            for r in rows:
                if r.get("step", 0) <= step:
                    f.write(json.dumps(r) + "\n")

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str) -> list[dict]:
    """All rows of a JSONL file (a torn last line is skipped)."""
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


DEFAULT_CURVES = ("sft/loss", "reward/mean", "success/train", "eval/success", "reward/plan_score", "format_errors/mean",
                  "ppo/policy_loss", "ppo/entropy", "ppo/moved_frac_old", "length/mean")


def plot_curves(stage_dirs: dict[str, str], out_png: str, keys: Optional[Iterable[str]] = None) -> Optional[str]:
    """One PNG with a panel per metric, a line per stage (stages laid end to end on the x axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {name: read_jsonl(os.path.join(d, "metrics.jsonl")) for name, d in stage_dirs.items()}
    keys = [k for k in (keys or DEFAULT_CURVES) if any(k in r for rows in data.values() for r in rows)]
    if not keys:
        return None
    cols = min(3, len(keys))
    rows_n = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.2 * rows_n), squeeze=False)
    offset = 0
    offsets = {}
    for name, rows in data.items():
        offsets[name] = offset
        offset += max([r["step"] for r in rows] or [0])
    for ax, key in zip(axes.flat, keys):
        for name, rows in data.items():
            pts = [(r["step"] + offsets[name], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="." if len(pts) < 30 else None, label=name)
        ax.set_title(key)
        ax.set_xlabel("step (stages end to end)")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png
