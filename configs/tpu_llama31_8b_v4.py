"""PilotRL with LLaMA-3.1-8B-Instruct (configs/tpu_llama31_8b.py) on a Cloud TPU v4-64 slice.

    python -m pilotrl_jax.aot --config configs/tpu_llama31_8b_v4.py        # does it fit? (CPU host)
    tpu/create.sh --type v4-64 ... ; tpu/launch.sh --config configs/tpu_llama31_8b_v4.py --workdir ...

Slice: v4-64 = 32 chips (8 hosts x 4 chips, one JAX device per chip: megacore), 32 GiB HBM and
275 bf16 TFLOP/s per chip; topology v4:2x4x4.
Batch geometry (one RL step; the paper's numbers, as on v5p):
- rollout.tasks_per_step (256) x rollout.group_size (16) = 4096 episodes of at most
  agent.token_budget = 16384 tokens; each host rolls out 32 tasks (512 episodes, whole GRPO groups).
- Training mesh (data 1, fsdp 4, tensor 8): float32 params + Adam moments, 12 bytes x 8.03B = 96 GB,
  3 GiB per chip. tensor 8 splits the 32 query heads (4 per chip) so the [heads, T, T] attention
  scores of a 16K-token row fit in 32 GiB; the rows of a micro-batch go one per fsdp group.
- rl.num_mini_batches = 4 (1024 rows each), rl.num_micro_batches = 256: 4 rows per micro-batch (one
  per fsdp group), gradients accumulated inside jit.
- Sampling is host-local over a host's 4 chips (tensor 8 does not divide 4, so the host copy is
  sharded fsdp 4): a bfloat16 copy of the policy (4 GiB per chip) and rollout.max_batch = 16
  episodes per host (128 over the slice): KV cache 16 x 16384 tokens x 128 KiB = 32 GiB per host,
  8 GiB per chip, kept beside the PPO step for the whole stage: the memory plan (an estimate) puts the
  update phase at 28.1 GiB per chip against 28.8 (90% of 32 GiB), so 32 rows would not fit.
  A host's 512 episodes run in 32 waves.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from configs_common import load  # noqa: E402


def get_config(arg: str = ""):
    """configs/tpu_llama31_8b.py with the v4-64 geometry above (arg: one stage, e.g. stage2)."""
    c = load("tpu_llama31_8b").get_config(arg)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 8
    c.rollout.max_batch = 16  # per host
    c.rl.num_mini_batches = 4
    c.rl.num_micro_batches = 256  # 1024 rows per mini-batch / 4 rows (one per fsdp group)
    c.tpu = dict(slice="v4-64", topology="v4:2x4x4", accelerator_type="v4-64",
                 runtime_version="tpu-ubuntu2204-base", zone="us-central2-b")
    return c
