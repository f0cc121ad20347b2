"""The real SmolLM2-135M-Instruct end to end on ALFWorld-engine tasks through the two commands of
configs/smollm2_alfworld.py (cut to one turn and one held-out task per mode): zero-shot AdaPlan and
ReAct evaluation, then one RL step of stage 3, the HF export, and the export's logits in
transformers' LlamaForCausalLM against our JAX model.

The commands run as subprocesses on one CPU device: the suite's conftest gives this process 8 fake
devices, and a 135M model sharded 8 ways on 2 cores is several times slower.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CONFIG = os.path.join(_ROOT, "configs", "smollm2_alfworld.py")
# the smoke config with one turn, a few sampled tokens, one task (episodes: ~400 prompt tokens + 40)
_TINY = [
    "--config.env.task_types=pick_and_place_simple", "--config.env.num_train_tasks=2",
    "--config.env.num_eval_tasks=2", "--config.agent.max_turns=1", "--config.agent.max_plan_tokens=24",
    "--config.agent.max_action_tokens=16", "--config.agent.token_budget=512", "--config.rollout.tasks_per_step=1",
    "--config.rollout.group_size=2", "--config.reward.max_response_len=64", "--config.reward.overlong_buffer=56",
    "--config.eval.num_tasks=1", "--config.stages.stage3.steps=1",
]


def _config(arg=""):
    spec = importlib.util.spec_from_file_location("smollm2_alfworld_cfg", _CONFIG)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def _run(module, *args):
    """Run `python -m module args` on one CPU device; returns its stdout (fails the test on exit != 0)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    p = subprocess.run([sys.executable, "-m", module, *args], cwd=_ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, f"{module} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return p.stdout


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("smollm2_alfworld"))


def test_config_points_at_the_converted_smollm2():
    from pilotrl_jax.train import config as C

    c = _config()
    assert c.model.source == "hf" and os.path.exists(os.path.join(c.model.path, "model.safetensors"))
    assert c.eval.modes == "adaplan,react" and c.env.name == "alfworld" and c.pipeline == "stage3"
    C.validate(c)
    s = _config("smoke,stage1,stage2,stage3")
    assert s.pipeline == "stage1,stage2,stage3" and s.stages.stage3.steps == 1
    C.validate(s)
    assert _config("smoke").stages.stage3.steps == 2
    with pytest.raises(ValueError, match="config.pipeline names stage 'stage9'"):
        C.validate(_config("smoke,stage9"))


def test_zero_shot_request_errors_name_the_input():
    from pilotrl_jax.experiments.zero_shot import check_request

    c = _config()
    assert check_request(c, None, None) == (16, ("adaplan", "react"))
    with pytest.raises(ValueError, match="num_eval_tasks"):
        check_request(c, 17, None)
    with pytest.raises(ValueError, match="num_tasks=0"):
        check_request(c, 0, None)
    with pytest.raises(ValueError, match="modes"):
        check_request(c, 1, "adaplan,plan")


@pytest.mark.slow
def test_zero_shot_adaplan_and_react(workdir):
    out = os.path.join(workdir, "zero_shot_rows.json")
    text = _run("pilotrl_jax.experiments.zero_shot", f"--config={_CONFIG}", f"--workdir={workdir}", "--num_tasks=1",
                f"--json={out}", *_TINY)
    assert "adaplan: success" in text and "react: success" in text
    with open(out) as f:
        rows = json.load(f)
    assert [r["mode"] for r in rows] == ["adaplan", "react"]
    for r in rows:
        assert r["episodes"] == 1 and 0.0 <= r["success_rate"] <= 1.0 and r["split"] == "heldout"
        assert r["wall_s"] > 0 and r["policy_tokens"] > 0
        with open(os.path.join(workdir, f"zero_shot_{r['mode']}.jsonl")) as f:
            assert len(f.readlines()) == 1


@pytest.mark.slow
def test_rl_step_export_and_transformers_parity(workdir):
    import transformers

    # Zero-shot, every episode of the group breaks the format after the same number of tokens: equal
    # rewards, GRPO advantages 0. A small entropy bonus makes the gradient non-zero regardless, so the
    # step backpropagates through the real model and the exported params are the updated ones.
    text = _run("pilotrl_jax.experiments.rl_smoke", f"--config={_CONFIG}:smoke", f"--workdir={workdir}", "--no_eval",
                *_TINY, "--config.rl.entropy_coef=0.01")
    assert "LlamaForCausalLM" in text and "max |logit diff|" in text
    with open(os.path.join(workdir, "smoke.json")) as f:
        report = json.load(f)
    m = report["stages"]["stage3"]["last_step"]
    assert m["step"] == 1 and m["batch/episodes"] == 2
    assert m["ppo/grad_norm"] > 0 and m["ppo/trained_tokens"] == 2 * m["length/policy_tokens"]
    assert m["ppo/sampler_abs_logprob_diff"] < 1e-3  # the sampler's log-probs are the trainer's
    c = report["export_check"]
    assert c["hf_class"] == "LlamaForCausalLM" and c["max_abs_logit_diff"] <= c["tol"] and c["tokens"] > 100
    assert c["argmax_agreement"] == 1.0
    cfg = transformers.AutoConfig.from_pretrained(report["hf_dir"])
    assert cfg.tie_word_embeddings and cfg.num_hidden_layers == 30 and cfg.vocab_size == 49152
    assert os.path.exists(os.path.join(report["hf_dir"], "tokenizer.json"))


def test_check_export_needs_an_exported_dir(tmp_path):
    from pilotrl_jax.experiments.rl_smoke import check_export

    with pytest.raises(FileNotFoundError, match="hf_dir"):
        check_export(str(tmp_path / "nowhere"), str(tmp_path))
