"""PilotRL with LLaMA-3.1-8B-Instruct (configs/tpu_llama31_8b.py) on a Cloud TPU v5e (v5litepod-64) slice.

    python -m pilotrl_jax.aot --config configs/tpu_llama31_8b_v5e.py       # does it fit? (CPU host)
    tpu/create.sh --type v5litepod-64 ... ; tpu/launch.sh --config configs/tpu_llama31_8b_v5e.py ...

Slice: v5litepod-64 = 64 chips (16 hosts x 4 chips), 16 GiB HBM and 197 bf16 TFLOP/s per chip;
topology v5e:8x8. Memory per chip is what shapes everything here.
Batch geometry (one RL step):
- rollout.tasks_per_step (256) x rollout.group_size (16) = 4096 episodes, as in the paper, but
  agent.token_budget = 8192 tokens (2048 prompt + 6144 response; the DAPO overlong window scaled to
  it: Lmax 6144, buffer 1536): a 16K-token row's activations do not fit in 16 GiB. ALFWorld episodes
  are mostly shorter than 4K tokens; longer ones end with status `budget`. Each host rolls out 16
  tasks (256 episodes, whole GRPO groups).
- Training mesh (data 1, fsdp 8, tensor 8): float32 params + Adam moments, 96 GB over 64 chips =
  1.5 GiB per chip; tensor 8 puts 4 query heads per chip (attention scores of one 8K row: 1 GiB).
- rl.num_mini_batches = 4 (1024 rows each), rl.num_micro_batches = 128: 8 rows per micro-batch (one
  per fsdp group); PPO batches padded to 2048, 4096 or 8192 tokens.
- Sampling is host-local over a host's 4 chips (fsdp 4): a bfloat16 copy of the policy (4 GiB per
  chip) and rollout.max_batch = 8 episodes per host (128 over the slice): KV cache 8 x 8192 tokens x
  128 KiB = 8 GiB per host, 2 GiB per chip, kept beside the PPO step for the whole stage (the memory
  plan, an estimate, puts the update phase at 13.0 of 14.4 GiB per chip; 16 rows would not fit). A
  host's 256 episodes run in 32 waves.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from configs_common import load  # noqa: E402


def get_config(arg: str = ""):
    """configs/tpu_llama31_8b.py with the v5litepod-64 geometry above (arg: one stage, e.g. stage2)."""
    c = load("tpu_llama31_8b").get_config(arg)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 8
    c.agent.token_budget = 8192
    c.reward.max_response_len = 6144  # DAPO Lmax within the 8K budget (2048 prompt)
    c.reward.overlong_buffer = 1536
    c.rollout.max_batch = 8  # per host
    c.rl.num_mini_batches = 4
    c.rl.num_micro_batches = 128  # 1024 rows per mini-batch / 8 rows (one per fsdp group)
    c.tpu = dict(slice="v5litepod-64", topology="v5e:8x8", accelerator_type="v5litepod-64",
                 runtime_version="v2-alpha-tpuv5-lite", zone="us-west4-a")
    c.aot = dict(seq_buckets=(2048, 4096, 8192), max_hbm_fraction=0.9)
    return c
