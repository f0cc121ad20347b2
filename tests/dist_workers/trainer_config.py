"""The trainer config of tests/test_multihost_trainer.py: configs/smoke.py made small enough for a
two-process run (loaded by path by the test and by tests/dist_workers/trainer_worker.py)."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_config(pipeline: str = "sft,stage1"):
    """SFT (2 steps) then stage 1 (2 steps of 2 tasks x 4 episodes) with evaluations on 3 tasks."""
    spec = importlib.util.spec_from_file_location("smoke_cfg", os.path.join(ROOT, "configs", "smoke.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config(pipeline)
    c.env.num_train_tasks = 8
    c.env.num_eval_tasks = 3
    c.eval.num_tasks = 3  # an uneven split: 2 tasks on process 0, 1 on process 1
    c.eval.every = 1  # a periodic evaluation (and a `best` copy) inside the RL stage
    c.agent.max_turns = 3
    c.agent.token_budget = 1024
    c.tokenizer.corpus_tasks = 4
    c.stages.sft.steps = 2
    c.stages.stage1.steps = 2
    c.rollout.tasks_per_step, c.rollout.group_size = 2, 4  # 8 rows: one GRPO group per host
    c.rl.num_mini_batches = 2
    c.checkpoint.async_save = False
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1  # batch rows over both hosts
    return c
