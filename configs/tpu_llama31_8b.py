"""PilotRL (the paper's LLaMA-3.1-8B-Instruct recipe, configs/pilotrl.py) on a Cloud TPU v5p-32 slice.

    python -m pilotrl_jax.train --config configs/tpu_llama31_8b.py --workdir gs://BUCKET/runs/r1 \
        --config.model.path=/mnt/models/Llama-3.1-8B-Instruct
    python -m pilotrl_jax.train --config configs/tpu_llama31_8b.py:stage2 ...   # one stage only
Check that it fits before paying for the slice (compiles on a CPU host, no weights needed):
    python -m pilotrl_jax.aot --config configs/tpu_llama31_8b.py            # topology from config.tpu

Slice: v5p-32 = 16 chips (4 hosts x 4 chips), 95 GiB HBM per chip; every host runs the same command.
Other slices: configs/tpu_llama31_8b_v4.py (v4-64), configs/tpu_llama31_8b_v5e.py (v5litepod-64).
Batch geometry (one RL step; the paper's numbers):
- rollout.tasks_per_step (256) x rollout.group_size (16) = 4096 episodes; each episode is one token
  sequence of at most agent.token_budget = 16384 tokens (2048 prompt + 14336 response, DAPO Lmax).
  Each host rolls out its 64 tasks (1024 episodes, whole GRPO groups) with its own sampler.
- Sampling is host-local: each host holds a bfloat16 copy of the policy (16 GiB, 4 GiB per chip, heads
  over its 4 chips) and rollout.max_batch = 32 episodes at once (per host; 128 over the slice): KV cache
  [32 layers, 32, 16384, 8, 128] in bf16 = 128 KiB per token, 2 GiB per episode, 64 GiB per host =
  16 GiB per chip (kv heads over the 4 chips); a host's 1024 episodes run in 32 waves. The cache and the
  copy stay in HBM for the whole stage, beside the PPO step too: `python -m pilotrl_jax.aot` measures
  that step at 16K tokens at 50.0 GiB per chip (53%) and the worst-case prefill (256 tokens x 32 rows at
  the full window) at 29.5 GiB; the memory plan estimates 64 rows per host at 63 GiB (not compiled).
- The PPO batch is padded to a power-of-two length (aot.seq_buckets: 4096, 8192, 16384), so the step
  compiles at most 3 times. rl.num_mini_batches = 4 optimizer updates of 64 tasks (1024 rows) each;
  each mini-batch is cut into rl.num_micro_batches = 256 micro-batches of 4 rows (one per data*fsdp
  group of chips) whose gradients are accumulated inside jit.
- Mesh (data 1, fsdp 4, tensor 4): weights and Adam moments sharded 4-way over fsdp and 4-way over
  tensor (heads, MLP, vocab), so the [heads, T, T] attention scores of a 16K-token row are split 4-way.
Numerics: float32 params and Adam moments (12 bytes/param: 5.6 GiB per chip), bfloat16 compute,
full remat per layer, layers scanned (one compiled layer body).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from configs_common import load  # noqa: E402

# config.json of meta-llama/Llama-3.1-8B-Instruct (written here: the AOT check downloads nothing).
LLAMA31_8B_INSTRUCT = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "torch_dtype": "bfloat16",
}


def get_config(arg: str = ""):
    """The paper's pipeline (arg: one stage, e.g. stage2) with the v5p-32 geometry above."""
    c = load("pilotrl").get_config(arg)
    c.model.source = "hf"
    c.model.path = "/mnt/models/Llama-3.1-8B-Instruct"  # copied to every worker by tpu/setup.sh
    c.model.hf_config = LLAMA31_8B_INSTRUCT  # for the AOT check; the trainer reads path/config.json
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.scan_layers = True
    c.model.remat_policy = "full"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 4
    c.agent.token_budget = 16384
    c.rollout.tasks_per_step = 256
    c.rollout.group_size = 16
    c.rollout.max_batch = 32  # per host (host-local sampler over 4 chips)
    c.rl.num_mini_batches = 4
    c.rl.num_micro_batches = 256  # 1024 rows per mini-batch / 4 rows per micro-batch
    c.checkpoint.every = 1  # a step is minutes long; preemption loses at most one
    c.checkpoint.keep = 2
    c.tpu = dict(slice="v5p-32", topology="v5p:2x2x4", accelerator_type="v5p-32",
                 runtime_version="v2-alpha-tpuv5", zone="us-east5-a")
    # the sampler's prefill/decode chunks are the engine's own, as the trainer runs them (train.shapes)
    c.aot = dict(seq_buckets=(4096, 8192, 16384), max_hbm_fraction=0.9)
    return c
