"""A seconds-long pipeline on the tiny pure-Python env (tests and quick checks):
SFT warm start, then PilotRL stages 1 -> 2 -> 3 on a random tiny LLaMA."""
from pilotrl_jax.train.config import base_config


def get_config(arg: str = ""):
    """Tiny model, tiny env, a few steps per stage."""
    c = base_config()
    c.env.name = "tiny"
    c.env.num_train_tasks = 24
    c.env.num_eval_tasks = 6
    c.model.hidden_size = 32
    c.model.intermediate_size = 64
    c.model.num_layers = 1
    c.model.num_heads = 2
    c.model.num_kv_heads = 1
    c.model.head_dim = 16
    c.tokenizer.vocab_size = 400
    c.tokenizer.corpus_tasks = 8
    c.agent.replan = "static"
    c.agent.max_turns = 6
    c.agent.max_plan_tokens = 96
    c.agent.max_action_tokens = 64
    c.agent.token_budget = 1536
    c.rollout.tasks_per_step = 2
    c.rollout.group_size = 4
    c.rl.num_mini_batches = 2
    c.eval.num_tasks = 4
    c.sft.batch_size = 8
    c.stages.sft.steps = 4
    c.stages.sft.lr = 3e-3
    for s in ("stage1", "stage2", "stage3"):
        c.stages[s].steps = 2
        c.stages[s].lr = 1e-4
    c.pipeline = arg or "sft,stage1,stage2,stage3"
    return c
