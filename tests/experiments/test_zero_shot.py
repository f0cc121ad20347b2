"""zero_shot: --exemplar none|expert|both gives a row per (mode, exemplar), and the table prints both
success and format-error rates (run on the demo's tiny random model: the plumbing, not the numbers)."""
import importlib.util
import json
import os

import pytest

from pilotrl_jax.experiments.zero_shot import check_exemplars, format_rows, zero_shot

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _demo_config(n_train: int = 4, n_eval: int = 2):
    spec = importlib.util.spec_from_file_location("demo_cfg_zero_shot", os.path.join(ROOT, "configs", "demo.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.env.num_train_tasks, c.env.num_eval_tasks, c.tokenizer.corpus_tasks = n_train, n_eval, 2
    c.agent.max_turns, c.agent.max_plan_tokens, c.agent.max_action_tokens = 1, 8, 8
    return c


def test_check_exemplars_names_the_flag_and_the_config_key():
    c = _demo_config()
    assert check_exemplars(c, None) == ("",)
    c.agent.exemplar = "expert"
    assert check_exemplars(c, None) == ("expert",)
    assert check_exemplars(c, "none") == ("",) and check_exemplars(c, "both") == ("", "expert")
    with pytest.raises(ValueError, match=r"--exemplar='yes' is unknown"):
        check_exemplars(c, "yes")
    c.agent.exemplar = "one"
    with pytest.raises(ValueError, match=r"config.agent.exemplar='one' is unknown"):
        check_exemplars(c, None)


def test_format_rows_prints_success_and_format_errors_per_exemplar():
    row = dict(model="m", mode="adaplan", success_rate=0.25, format_error_rate=0.5, episodes=4, mean_turns=3.0,
               wall_s=1.0, per_type={"pick": {"success_rate": 0.25, "episodes": 4}})
    text = format_rows([dict(row, exemplar="none"), dict(row, exemplar="expert", success_rate=0.5)])
    assert "fmt err" in text and "exemplar" in text
    assert "adaplan: success 25.0% (1/4)" in text and "format errors 50%" in text
    assert "adaplan + expert exemplar: success 50.0% (2/4)" in text


def test_zero_shot_with_and_without_the_exemplar(tmp_path):
    rows = zero_shot(_demo_config(), str(tmp_path), num_tasks=1, modes="adaplan", progress=False, exemplar="both")
    assert [(r["mode"], r["exemplar"]) for r in rows] == [("adaplan", "none"), ("adaplan", "expert")]
    assert rows[0]["exemplar_task"] is None and rows[1]["exemplar_task"].startswith("alfworld-train-")
    for r in rows:
        assert r["episodes"] == 1 and 0.0 <= r["format_error_rate"] <= 1.0
    prompts = []
    for name in ("zero_shot_adaplan.jsonl", "zero_shot_adaplan_expert_exemplar.jsonl"):
        with open(tmp_path / name) as f:
            prompts.append(json.loads(f.readline())["spans"][0]["text"])
    assert "--- Example:" not in prompts[0] and "--- Example:" in prompts[1]
    text = format_rows(rows)
    assert "adaplan: success" in text and "adaplan + expert exemplar: success" in text
