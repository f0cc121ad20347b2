"""LLaMA-3.1-8B-Instruct PilotRL stages on a Cloud TPU v5p-32 slice (16 chips, 4 hosts).

Use: `python -m pilotrl_jax.train --config configs/tpu_llama31_8b.py:executor --workdir gs://BUCKET/run`
(stages: executor | planner | joint) and check that it fits before paying for the slice with
`python -m pilotrl_jax.aot --config configs/tpu_llama31_8b.py --topology v5p:2x2x4`.

Batch geometry (the paper's, see /work/shared/PILOTRL.md):
- one RL step = `tasks_per_step` (256) tasks x `group_size` (16) rollouts = 4096 episodes;
- each episode is one token sequence (prompt <= 2048 + responses/observations <= 14336 = 16384),
  padded to the smallest of `seq_buckets` that holds the longest episode of the step, so a run
  compiles the PPO step at most len(seq_buckets) times;
- the PPO step makes `num_mini_batches` (4) optimizer updates of 64 tasks (1024 rows) each;
  a mini-batch is cut into micro-batches of `micro_batch_rows[bucket]` rows whose gradients are
  accumulated inside jit (the row count is a multiple of data*fsdp chips and shrinks as the
  bucket grows, so tokens per micro-batch stay roughly constant);
- the sampler holds `sampler.max_batch` episodes at once (KV cache [32, max_batch, max_len, 8, 128]
  in bf16 = 128 KiB per token), so 4096 rollouts run in 4096/max_batch waves.
Numerics: params and Adam moments float32 (sharded over fsdp), compute bfloat16, full remat per
layer, layers scanned (one compiled layer body).
"""
from ml_collections import ConfigDict

# config.json of meta-llama/Llama-3.1-8B-Instruct (written here: nothing is downloaded to compile).
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

# Stage -> (trained spans, epochs, plan source): the paper's three progressive stages.
STAGES = {
    "executor": (("action",), 1, "external"),
    "planner": (("plan",), 2, "policy"),
    "joint": (("plan", "action"), 1, "policy"),
}


def get_config(stage: str = "executor") -> ConfigDict:
    """The TPU config for one PilotRL stage (`configs/tpu_llama31_8b.py:<stage>`)."""
    stage = stage or "executor"
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not one of {sorted(STAGES)}; use configs/tpu_llama31_8b.py:executor")
    spans, epochs, plan_source = STAGES[stage]
    c = ConfigDict()
    c.name = f"tpu_llama31_8b_{stage}"
    c.stage = ConfigDict(dict(name=stage, trained_spans=spans, plan_source=plan_source,
                              init_from_previous_stage=stage != "executor"))
    c.model = ConfigDict(dict(
        hf_config=LLAMA31_8B_INSTRUCT,
        hf_path="gs://YOUR_BUCKET/models/Llama-3.1-8B-Instruct",  # HF dir (config.json + safetensors)
        dtype="bfloat16", param_dtype="float32", scan_layers=True, remat_policy="full",
    ))
    c.tpu = ConfigDict(dict(
        slice="v5p-32",            # 16 chips, 4 hosts x 4 chips, 95 GiB HBM per chip
        topology="v5p:2x2x4",      # for python -m pilotrl_jax.aot
        runtime_version="v2-alpha-tpuv5",
        zone="us-east5-a",
    ))
    # (data, fsdp, tensor); -1 = the rest. Weights/optimizer sharded 4-way (fsdp), heads 4-way (tensor):
    # tensor parallelism cuts the [heads, T, T] attention scores of 16K-token rows per chip.
    c.mesh = ConfigDict(dict(data=1, fsdp=-1, tensor=4))
    c.batch = ConfigDict(dict(
        tasks_per_step=256, group_size=16, num_mini_batches=4,
        seq_buckets=(4096, 8192, 16384),
        micro_batch_rows=(16, 8, 4),   # per bucket, global rows per micro-batch (multiple of data*fsdp)
        max_prompt_len=2048, max_response_len=14336,
    ))
    c.sampler = ConfigDict(dict(
        max_batch=256, max_len=16384, prefill_chunk=512, decode_chunk=64,
        param_dtype="bfloat16", cache_dtype="bfloat16",
        temperature=1.0, top_p=1.0, top_k=0,
    ))
    c.ppo = ConfigDict(dict(
        advantage_estimator="grpo", clip_eps_low=0.2, clip_eps_high=0.2, dual_clip=3.0,
        loss_agg_mode="token-mean", kl_coef=0.0, entropy_coef=0.0, lr=1e-6, lr_schedule="constant",
        max_grad_norm=1.0, epochs=epochs, use_critic=False,
    ))
    # What the AOT check assumes about memory: the train state stays in HBM while sampling.
    c.aot = ConfigDict(dict(state_resident_while_sampling=True, max_hbm_fraction=0.9))
    c.checkpoint = ConfigDict(dict(every_steps=10, keep=3))
    return c
