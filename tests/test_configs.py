"""Every shipped config loads and passes validation; the long-RL demo differs from the demo only where it says."""
import glob
import importlib.util
import os
import sys

import pytest

from pilotrl_jax.train import config as C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py")) if not p.endswith("configs_common.py"))


def _load(path):
    sys.path.insert(0, os.path.dirname(path))  # configs import configs_common as config_flags lets them
    try:
        spec = importlib.util.spec_from_file_location("cfg_" + os.path.basename(path)[:-3], path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.get_config()
    finally:
        sys.path.remove(os.path.dirname(path))


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_config_loads_and_validates(path):
    C.validate(_load(path))


def test_long_rl_demo_changes_only_rl_and_eval_settings():
    demo = _load(os.path.join(ROOT, "configs", "demo.py")).to_dict()
    long = _load(os.path.join(ROOT, "configs", "demo_rl_long.py")).to_dict()
    assert long["model"] == demo["model"] and long["sft"] == demo["sft"] and long["stages"]["sft"] == demo["stages"]["sft"]
    assert long["rollout"]["temperature"] == 0.6 and long["stages"]["stage3"]["steps"] == 30
    assert C.pipeline(_load(os.path.join(ROOT, "configs", "demo_rl_long.py"))) == ("sft", "stage3")
    assert C.resolve_stage(_load(os.path.join(ROOT, "configs", "demo_rl_long.py")), "stage3").ppo.temperature == 0.6


def test_eval_stages_selects_pipeline_stages_and_rejects_others():
    cfg = _load(os.path.join(ROOT, "configs", "demo.py"))
    assert C.evaluated_stages(cfg) == ("sft", "stage3")  # the demo evaluates the warm start and the final model
    cfg.eval.stages = ""
    assert C.evaluated_stages(cfg) == C.pipeline(cfg)
    cfg.eval.stages = "stage3,sft"
    assert C.evaluated_stages(cfg) == ("sft", "stage3")  # pipeline order
    cfg.eval.stages = "sft,stage9"
    with pytest.raises(ValueError, match="eval.stages names 'stage9'"):
        C.validate(cfg)


def test_evidence_table_config_evaluates_every_stage_and_the_warm_start_in_both_modes():
    from pilotrl_jax.experiments.table import table_config

    cfg = table_config(_load(os.path.join(ROOT, "configs", "demo.py")), 7)
    C.validate(cfg)
    assert cfg.seed == 7 and C.evaluated_stages(cfg) == C.pipeline(cfg) == (
        "sft", "stage1", "stage2", "stage3", "stage3_only")
    assert C.eval_modes(cfg, "sft") == ("adaplan", "react") and C.eval_modes(cfg, "stage3") == ("adaplan",)
    cfg.stages.stage1.eval_modes = "adaplan,chat"
    with pytest.raises(ValueError, match="stages.stage1.eval_modes has 'chat'"):
        C.validate(cfg)


def test_grpo_std_none_in_a_config_is_dr_grpo_and_a_bad_value_is_named():
    cfg = _load(os.path.join(ROOT, "configs", "demo.py"))
    assert C.resolve_stage(cfg, "stage3").ppo.grpo_std == "unbiased"
    cfg.rl.grpo_std = "none"
    assert C.resolve_stage(cfg, "stage3").ppo.grpo_std is None
    cfg.rl.grpo_std = "sample"
    with pytest.raises(ValueError, match="grpo_std='sample'"):
        C.resolve_stage(cfg, "stage3")
