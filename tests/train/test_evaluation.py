import itertools
import types

import numpy as np
import pytest

from pilotrl_jax.train.evaluation import format_table, pass_at_k, success_table


def _brute_pass_at_k(outcomes, k):
    """Fraction of k-subsets of the samples with at least one success."""
    subsets = list(itertools.combinations(outcomes, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n,c,k", [(4, 0, 1), (4, 1, 1), (4, 1, 2), (4, 2, 3), (4, 4, 4), (5, 1, 4), (8, 3, 4)])
def test_pass_at_k_matches_counting_subsets(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k([1] * c + [0] * (n - c), k))


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="n=2, c=3, k=1"):
        pass_at_k(2, 3, 1)
    with pytest.raises(ValueError, match="k=5"):
        pass_at_k(4, 1, 5)


def test_success_table_reports_pass_at_k_over_tasks():
    tasks = [types.SimpleNamespace(task_type="a"), types.SimpleNamespace(task_type="b"),
             types.SimpleNamespace(task_type="b")]
    wins = {0: [0, 1, 0, 0], 1: [0, 0, 0, 0], 2: [1, 1, 0, 1]}
    eps = [types.SimpleNamespace(group_id=g, won=bool(w), num_turns=3, format_errors=0)
           for g, ws in wins.items() for w in ws]
    t = success_table(types.SimpleNamespace(episodes=eps), tasks)
    assert t["episodes"] == 12 and t["success_rate"] == pytest.approx(4 / 12)
    assert t["samples_per_task"] == 4 and t["pass_at_k"] == pytest.approx(2 / 3)
    assert t["per_type"]["b"]["success_rate"] == pytest.approx(3 / 8)
    row = dict(model="sft", mode="adaplan", **t)
    assert "66.7% @4" in format_table([row])
    assert np.isclose(success_table(types.SimpleNamespace(episodes=eps[:4]), tasks[:1])["pass_at_k"], 1.0)


def test_rollout_engine_keys_reach_the_sampler():
    """rollout.share_prefix and rollout.fine_buckets take effect in the engines the trainer builds."""
    import types

    import jax

    from pilotrl_jax.agent.tokenizer import build_word_tokenizer
    from pilotrl_jax.models import llama
    from pilotrl_jax.models.config import LlamaConfig
    from pilotrl_jax.train.config import base_config
    from pilotrl_jax.train.evaluation import make_engine

    cfg = base_config()
    tok = build_word_tokenizer(["go to the kitchen", "take apple 1"] * 5, vocab_size=320)
    mc = LlamaConfig.tiny(vocab_size=len(tok))
    params = llama.init_params(mc, jax.random.PRNGKey(0))
    for share, fine in ((True, True), (False, False), (True, False)):
        cfg.rollout.share_prefix, cfg.rollout.fine_buckets = share, fine
        ctx = types.SimpleNamespace(cfg=cfg, model_cfg=mc, mesh=None, tokenizer=tok)
        eng = make_engine(ctx, params, rows=2, seed=0)
        assert (eng.share_prefix, eng.fine_buckets) == (share, fine)
