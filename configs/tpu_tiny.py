"""A tiny model in the TPU config layout, for tests of `python -m pilotrl_jax.aot` on a small topology.

    python -m pilotrl_jax.aot --config configs/tpu_tiny.py --topology v5e:2x2
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from configs_common import load  # noqa: E402


def get_config(arg: str = ""):
    """Smoke-sized pipeline with a 2x2 v5e slice geometry (fsdp 2 x tensor 2)."""
    c = load("smoke").get_config(arg or "stage1,stage2,stage3")
    c.model.num_heads, c.model.num_kv_heads = 4, 2
    c.model.dtype, c.model.scan_layers, c.model.remat_policy = "bfloat16", True, "full"
    c.agent.token_budget = 128
    c.rollout.tasks_per_step, c.rollout.group_size, c.rollout.max_batch = 4, 4, 8
    c.rl.num_mini_batches, c.rl.num_micro_batches = 2, 4  # 8 rows per mini-batch, 2 per micro-batch
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 2
    c.tpu = dict(slice="v5litepod-4", topology="v5e:2x2", accelerator_type="v5litepod-4",
                 runtime_version="v2-alpha-tpuv5-lite", zone="us-west4-a")
    c.aot = dict(seq_buckets=(64, 128), max_hbm_fraction=0.9)  # sampler chunks: the engine's own (train.shapes)
    return c
