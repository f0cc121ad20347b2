"""A tiny model with the TPU config layout: for tests of `pilotrl_jax.aot` on a small topology."""
from ml_collections import ConfigDict


def get_config(arg: str = "") -> ConfigDict:
    """Tiny LLaMA, 2x2 slice geometry (`python -m pilotrl_jax.aot --config configs/tpu_tiny.py --topology v5e:2x2`)."""
    c = ConfigDict()
    c.name = "tpu_tiny"
    c.stage = ConfigDict(dict(name="executor", trained_spans=("action",), plan_source="external",
                              init_from_previous_stage=False))
    c.model = ConfigDict(dict(
        hf_config=dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       max_position_embeddings=1024, eos_token_id=2, bos_token_id=1),
        hf_path="", dtype="bfloat16", param_dtype="float32", scan_layers=True, remat_policy="full",
    ))
    c.tpu = ConfigDict(dict(slice="v5litepod-4", topology="v5e:2x2", runtime_version="v2-alpha-tpuv5-lite",
                            zone="us-west4-a"))
    c.mesh = ConfigDict(dict(data=1, fsdp=-1, tensor=2))
    c.batch = ConfigDict(dict(tasks_per_step=4, group_size=4, num_mini_batches=2, seq_buckets=(64, 128),
                              micro_batch_rows=(4, 2), max_prompt_len=32, max_response_len=96))
    c.sampler = ConfigDict(dict(max_batch=8, max_len=128, prefill_chunk=32, decode_chunk=8,
                                param_dtype="bfloat16", cache_dtype="bfloat16", temperature=1.0, top_p=1.0, top_k=0))
    c.ppo = ConfigDict(dict(advantage_estimator="grpo", lr=1e-6, epochs=1, use_critic=False))
    c.aot = ConfigDict(dict(state_resident_while_sampling=True, max_hbm_fraction=0.9))
    c.checkpoint = ConfigDict(dict(every_steps=10, keep=3))
    return c
