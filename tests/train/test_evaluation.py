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
