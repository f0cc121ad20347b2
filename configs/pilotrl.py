"""PilotRL as the paper ran it (LLaMA-3.1-8B-Instruct recipe), on our real ALFWorld engine.

    python -m pilotrl_jax.train --config configs/pilotrl.py --workdir DIR --config.model.path=HF_DIR
    python -m pilotrl_jax.train --config configs/pilotrl.py:stage2 ...   # one stage only

Stage 1 (executor): plans from the environment expert, only thought+action tokens trained.
Stage 2 (planner): the policy plans, only plan tokens trained, reward + plan-quality score.
Stage 3 (joint): plan + action tokens trained. GRPO n=16, no KL, clip 0.2/0.2, dual-clip 3,
token-mean, lr 1e-6, 256 tasks per step in 4 mini-batches, format -0.1, DAPO overlong penalty.
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
