"""PilotRL as the paper ran it (LLaMA-3.1-8B-Instruct recipe), on our real ALFWorld engine.

    python -m pilotrl_jax.train --config configs/pilotrl.py --workdir DIR --config.model.path=HF_DIR
    python -m pilotrl_jax.train --config configs/pilotrl.py:stage2 ...   # one stage only

Stage 1 (executor): plans from the environment expert, only thought+action tokens trained.
Stage 2 (planner): the policy plans, only plan tokens trained, reward + plan-quality score.
Stage 3 (joint): plan + action tokens trained. GRPO n=16, no KL, clip 0.2/0.2, dual-clip 3,
token-mean, lr 1e-6, 256 tasks per step in 4 mini-batches, format -0.1, DAPO overlong penalty.

Memory: 4096 episodes of up to 16384 tokens a step. Before it loads anything the trainer checks the
config against the devices (`pilotrl_jax.train.memory_plan`: an estimate, budget 90% of each device's
reported memory or config.rollout.memory_budget_gib): rollout.max_batch = 0 becomes the most sampler
rows that fit; any other setting that does not fit stops the run with an error naming the keys, what
they cost and the values that fit. As written (float32 params and Adam moments, dots_no_batch remat,
rl.num_micro_batches = 1: one micro-batch of 1024 rows x 16K tokens) it fits no GPU host:
- one H200 (141 GB): refused. The 8B model's float32 train state, its per-layer sampling copy and its
  gradients need 209 GiB before any activation; even with every saving (full remat, bfloat16 params,
  rl.logits_chunk_size) one 16K-token row needs 142 GiB. Use more devices, or a smaller token budget.
- a host of 8 x H200: refused, naming model.remat_policy='full' (the matmul outputs dots_no_batch keeps
  cost 88 GiB per 16K-token row) with rl.num_micro_batches >= 64, and eval.num_tasks x eval.group_size
  <= 48 (50 held-out episodes do not split over 8 GPUs). With
      --config.model.remat_policy=full --config.rl.num_micro_batches=128 --config.eval.num_tasks=48
  it runs: 1 row per GPU per micro-batch, update phase ~106 GiB per GPU, and rollout.max_batch = 0
  derives 128 sampler rows (16 per GPU; 32 waves per step). Let XLA use the memory the plan counts on:
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 (the default preallocates 75%, and the plan budgets 90% of that).
TPU slices: configs/tpu_llama31_8b*.py (checked ahead of time by `python -m pilotrl_jax.aot`).
"""
from pilotrl_jax.train.config import base_config


def get_config(arg: str = ""):
    """The paper's pipeline (arg: a single stage name to run only that stage)."""
    c = base_config()
    c.model.source = "hf"
    c.model.path = "/path/to/Llama-3.1-8B-Instruct"
    c.model.dtype = "bfloat16"
    c.model.scan_layers = True
    c.model.remat_policy = "dots_no_batch"
    c.env.num_train_tasks = 3000
    c.env.num_eval_tasks = 200
    c.agent.token_budget = 16384  # 2048 prompt + 14336 response tokens (DAPO Lmax)
    c.rollout.tasks_per_step = 256
    c.rollout.group_size = 16
    c.rl.num_mini_batches = 4
    # epochs over the task set (paper: 1 / 2 / 1) expressed as steps of 256 tasks
    c.stages.stage1.steps = 3000 // 256
    c.stages.stage2.steps = 2 * 3000 // 256
    c.stages.stage3.steps = 3000 // 256
    c.stages.stage2.plan_weight = 0.5
    c.judge.kind = "grounded"  # or "http" with judge.base_url/model (the paper: Qwen2.5-14B)
    c.pipeline = arg or "stage1,stage2,stage3"
    return c
