"""Trainer checkpoints: save/restore, keep-last-N, corrupted latest falls back, metrics/plots."""
import os

import jax
import jax.numpy as jnp
import numpy as np

from pilotrl_jax.models import llama, param_store
from pilotrl_jax.models.config import LlamaConfig
from pilotrl_jax.train.checkpoints import Checkpointer
from pilotrl_jax.train.metrics import MetricsWriter, plot_curves, read_jsonl


def _state(scale):
    return {"opt": {"mu": jnp.full((3, 4), scale)}, "step": jnp.asarray(int(scale), jnp.int32),
            "rng": jax.random.PRNGKey(int(scale))}


def test_save_restore_keep_and_corruption_fallback(tmp_path, capsys):
    c = LlamaConfig.tiny()
    p = llama.init_params(c)
    ck = Checkpointer(str(tmp_path / "ck"), c, keep=2)
    for step in (1, 2, 3):
        ck.save(step, jax.tree.map(lambda x: x * step, p), _state(step), {"stage": "stage1", "data_pos": step * 10})
    ck.wait()
    assert ck.steps() == [2, 3]
    step, params, state, meta = ck.restore_latest(p, _state(0))
    assert step == 3 and meta["data_pos"] == 30 and meta["stage"] == "stage1" and meta["git_commit"]
    np.testing.assert_array_equal(np.asarray(params["embed"]), np.asarray(p["embed"]) * 3)
    assert int(state["step"]) == 3
    # corrupt step 3: every array file truncated/garbled -> restore says so and returns step 2
    for root, _, files in os.walk(tmp_path / "ck" / "3" / "params"):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    step, params, _, meta = ck.restore_latest(p, _state(0))
    assert step == 2 and meta["data_pos"] == 20
    assert "checkpoint step 3" in capsys.readouterr().out
    # export-compatible: the manager root is readable by param_store
    ck.save_params_copy("final", p)
    c2, p2 = param_store.load_params(str(tmp_path / "ck" / "final"))
    assert c2 == c
    ck.close()


def test_metrics_jsonl_tensorboard_and_plot(tmp_path):
    w = MetricsWriter(str(tmp_path / "s1"))
    for s in range(1, 6):
        w.write(s, {"reward/mean": s * 0.1, "eval/success": float("nan") if s < 5 else 0.5})
    w.truncate_after(3)
    w.write(4, {"reward/mean": 0.9})
    w.close()
    rows = read_jsonl(str(tmp_path / "s1" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[0]["eval/success"] is None
    assert os.listdir(tmp_path / "s1" / "tb")
    out = plot_curves({"stage1": str(tmp_path / "s1")}, str(tmp_path / "curves.png"))
    assert out and os.path.getsize(out) > 1000
