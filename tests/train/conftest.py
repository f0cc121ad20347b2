"""Shared helpers of the trainer tests."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def small_demo_config():
    """configs/demo.py with few tasks: small_demo_config(n_train, n_eval, corpus_tasks=2)."""
    def make(n_train: int, n_eval: int, corpus_tasks: int = 2):
        spec = importlib.util.spec_from_file_location("demo_cfg_small", os.path.join(ROOT, "configs", "demo.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        cfg = mod.get_config()
        cfg.env.num_train_tasks, cfg.env.num_eval_tasks, cfg.tokenizer.corpus_tasks = n_train, n_eval, corpus_tasks
        return cfg

    return make
