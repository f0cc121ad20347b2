"""Every shipped config loads and passes validation; keys are refused by name where they have no home."""
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


# One home per setting: keys the stages or the rollout own, and keys nothing reads, are refused by name.
@pytest.mark.parametrize("section,key,value,home", [
    ("rl", "lr", 1e-4, r"stages\.<stage>\.lr"),
    ("rl", "epochs", 2, r"stages\.<stage>\.ppo_epochs"),
    ("rl", "kl_coef", 0.1, r"stages\.<stage>\.kl_coef"),
    ("rl", "advantage_estimator", "rloo", r"stages\.<stage>\.advantage_estimator"),
    ("rl", "temperature", 0.7, r"rollout\.temperature"),
    ("reward", "plan_weight", 0.5, r"stages\.<stage>\.plan_weight"),
    ("sft", "max_len", 512, r"agent\.token_budget"),
    ("reward", "step_advantage_weight", 1.0, r"rl\.step_advantage_weight"),
    ("reward", "step_gamma", 0.9, r"rl\.step_gamma"),
    ("reward", "step_norm", "mean", r"rl\.step_norm"),
])
def test_a_key_another_section_owns_is_refused_with_its_home(section, key, value, home):
    cfg = _load(os.path.join(ROOT, "configs", "smoke.py"))
    assert key not in cfg[section]  # the base config does not offer it
    cfg[section][key] = value
    with pytest.raises(ValueError, match=rf"config\.{section}\.{key} is not a key: the setting lives in config\.{home}"):
        C.validate(cfg)


# Knobs that were measured, did not help and are no published method: gone, and refused by name.
@pytest.mark.parametrize("section,key,value", [
    ("sft", "recovery_rate", 0.2),
    ("reward", "wasted_turn_advantage", -0.5),
    ("rl", "negative_advantage_scale", 0.0),
    ("rl", "frozen_params", "embed,lm_head"),
])
def test_a_removed_key_is_refused_by_name(section, key, value):
    cfg = _load(os.path.join(ROOT, "configs", "demo.py"))
    assert key not in cfg[section]
    cfg[section][key] = value
    with pytest.raises(ValueError, match=rf"config\.{section}\.{key} is not a key and would be ignored"):
        C.validate(cfg)


def test_the_step_level_credit_is_set_in_the_rl_config():
    cfg = _load(os.path.join(ROOT, "configs", "demo.py"))
    assert C.resolve_stage(cfg, "stage3").ppo.step_advantage_weight == 0.0  # the demo: plain GRPO
    cfg.rl.step_advantage_weight, cfg.rl.step_gamma, cfg.rl.step_norm = 1.0, 0.9, "mean"
    C.validate(cfg)
    ppo = C.resolve_stage(cfg, "stage3").ppo
    assert (ppo.step_advantage_weight, ppo.step_gamma, ppo.step_norm) == (1.0, 0.9, "mean")
    cfg.rl.step_norm = "z"
    with pytest.raises(ValueError, match="step_norm='z'"):
        C.validate(cfg)


def test_stage_settings_take_effect():
    cfg = _load(os.path.join(ROOT, "configs", "smoke.py"))
    cfg.rollout.temperature = 0.7
    cfg.stages.stage2.lr, cfg.stages.stage2.ppo_epochs, cfg.stages.stage2.kl_coef = 3e-5, 3, 0.05
    cfg.stages.stage2.advantage_estimator, cfg.stages.stage2.plan_weight = "rloo", 0.25
    C.validate(cfg)
    st = C.resolve_stage(cfg, "stage2")
    assert (st.ppo.lr, st.ppo.epochs, st.ppo.kl_coef, st.ppo.advantage_estimator, st.ppo.temperature) == (
        3e-5, 3, 0.05, "rloo", 0.7)
    assert st.reward.plan_weight == 0.25
    assert C.resolve_stage(cfg, "stage3").ppo.lr == cfg.stages.stage3.lr


def test_unknown_keys_are_refused_with_the_closest_names():
    cfg = _load(os.path.join(ROOT, "configs", "smoke.py"))
    cfg.rollout.temprature = 0.7
    with pytest.raises(ValueError, match=r"config\.rollout\.temprature is not a key.*did you mean temperature"):
        C.validate(cfg)
    cfg = _load(os.path.join(ROOT, "configs", "smoke.py"))
    cfg.stages.stage1.learning_rate = 1e-5
    with pytest.raises(ValueError, match=r"config\.stages\.stage1\.learning_rate is not a key"):
        C.validate(cfg)
    cfg = _load(os.path.join(ROOT, "configs", "smoke.py"))
    cfg.env.kwargs.anything = 1  # free-form: the environment family's own keys
    C.validate(cfg)


def test_rl_only_stage_keys_on_an_sft_stage_are_refused():
    cfg = _load(os.path.join(ROOT, "configs", "smoke.py"))
    cfg.stages.sft.ppo_epochs = 2
    with pytest.raises(ValueError, match=r"config\.stages\.sft\.ppo_epochs=2 would be ignored: stage 'sft' is an SFT"):
        C.validate(cfg)


def test_the_tokenizer_corpus_is_the_expert_commands_by_default_as_in_every_recorded_demo():
    assert C.base_config().tokenizer.executor_turns is False
    assert _load(os.path.join(ROOT, "configs", "demo.py")).tokenizer.executor_turns is False
