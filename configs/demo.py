"""The CPU demo (`make demo`): a tiny LLaMA with a tokenizer built from ALFWorld text, an SFT warm
start on expert AdaPlan demonstrations, then PilotRL stages 1 -> 2 -> 3 on ALFWorld-engine tasks
from the project's generator; evaluation on held-out rooms. About 15 minutes on 2 CPU cores.

The warm-start budget (`stages.sft.steps`) is deliberately small: the demo shows what RL adds on
top of a model that has just learned the format. Nothing is tuned on the held-out split.
"""
from pilotrl_jax.train.config import base_config


def get_config(arg: str = ""):
    """Demo pipeline on ALFWorld (arg: pipeline override, e.g. 'sft,stage1')."""
    c = base_config()
    c.seed = 0
    c.env.name = "alfworld"
    c.env.task_types = "pick_and_place_simple,look_at_obj_in_light"
    c.env.num_train_tasks = 64
    c.env.num_eval_tasks = 16
    c.model.hidden_size = 128
    c.model.intermediate_size = 384
    c.model.num_layers = 2
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.head_dim = 32
    c.tokenizer.vocab_size = 1024
    c.tokenizer.corpus_tasks = 16
    c.agent.mode = "adaplan"
    c.agent.replan = "static"
    c.agent.max_turns = 10
    c.agent.max_plan_tokens = 96
    c.agent.max_action_tokens = 48
    c.agent.token_budget = 2048
    c.rollout.tasks_per_step = 4
    c.rollout.group_size = 4
    c.rl.num_mini_batches = 2
    c.reward.max_response_len = 2048
    c.reward.overlong_buffer = 512
    c.eval.num_tasks = 16
    c.eval.modes = "adaplan"
    c.sft.batch_size = 16
    c.checkpoint.every = 2
    c.stages.sft.steps = 40
    c.stages.sft.lr = 3e-3
    c.stages.stage1.steps = 3
    c.stages.stage2.steps = 3
    c.stages.stage3.steps = 3
    for s in ("stage1", "stage2", "stage3"):
        c.stages[s].lr = 2e-5
    c.pipeline = arg or "sft,stage1,stage2,stage3"
    return c
