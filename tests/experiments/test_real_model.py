"""The real SmolLM2-135M-Instruct through the whole PilotRL pipeline via the one script for every scale
(`python -m pilotrl_jax.experiments.real_model`), at the config's `tiny` size: SFT warm start on expert
AdaPlan and ReAct demonstrations in SmolLM2's own chat template, stages 1 -> 2 -> 3, stage 3 alone from
the warm start, held-out evaluation of every model in both modes, results.json and curves, the HF
export and its logits in transformers' LlamaForCausalLM.

The script runs as a subprocess on one CPU device: the suite's conftest gives this process 8 fake
devices, and a 135M model sharded 8 ways on 2 cores is several times slower.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CONFIG = os.path.join(_ROOT, "configs", "smollm2_alfworld.py")
STAGES = ["sft", "stage1", "stage2", "stage3", "stage3_only"]


def _config(arg=""):
    spec = importlib.util.spec_from_file_location("smollm2_alfworld_cfg", _CONFIG)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def _run(module, *args):
    """Run `python -m module args` on one CPU device; returns its stdout (fails the test on exit != 0)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false")
    # one device, and LLVM's optimizations back on (conftest turns them off for faster compiles; this
    # run is bound by the model's compute: 225 s with them, 240 s without)
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith(("--xla_force_host_platform_device_count",
                                                     "--xla_backend_optimization_level")))
    p = subprocess.run([sys.executable, "-m", module, *args], cwd=_ROOT, env=env, capture_output=True, text=True,
                       timeout=1500)
    assert p.returncode == 0, f"{module} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return p.stdout


def test_one_config_three_scales():
    from pilotrl_jax.train import config as C

    cpu, dev, tiny = _config(), _config("device"), _config("tiny")
    for c in (cpu, dev, tiny):
        C.validate(c)
        assert c.model.source == "hf" and os.path.exists(os.path.join(c.model.path, "model.safetensors"))
        assert c.pipeline == ",".join(STAGES) and c.eval.modes == "adaplan,react"
        assert c.stages.sft.mode == "adaplan,react" and c.stages.stage3_only.init_from == "sft"
    assert _config("cpu").to_dict() == cpu.to_dict()
    assert dev.model.dtype == "bfloat16" and dev.model.param_dtype == "float32"
    assert dev.eval.num_tasks * dev.eval.group_size >= 128  # episodes per results row
    assert cpu.model.dtype == "float32"
    from pilotrl_jax.train import memory_plan

    dev.rollout.memory_budget_gib = 40.0  # the device size fits a 40 GiB GPU by the trainer's memory plan
    memory_plan.check(dev, log=lambda _: None)
    assert _config("tiny,sft,stage3").pipeline == "sft,stage3"
    with pytest.raises(ValueError, match="pick one of"):
        _config("cpu,device")
    with pytest.raises(ValueError, match="config.pipeline names stage 'devcie'"):
        C.validate(_config("devcie"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny pipeline, once for the module's tests (about 5 minutes on 2 idle cores)."""
    out = str(tmp_path_factory.mktemp("smollm2_tiny"))
    # Before training most episodes of a group break the format alike; a small entropy bonus makes each
    # RL step's gradient non-zero regardless, so every stage backpropagates through the real model.
    text = _run("pilotrl_jax.experiments.real_model", f"--config={_CONFIG}:tiny", f"--out={out}",
                "--config.rl.entropy_coef=0.01")
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    yield out, text, report
    # ~10 GB of checkpoints: pytest keeps the last 3 sessions' tmp dirs, which would fill a small disk
    shutil.rmtree(out, ignore_errors=True)


@pytest.mark.slow
def test_every_stage_trains_its_spans(run):
    out, text, report = run
    assert list(report["stages"]) == STAGES
    sft = report["stages"]["sft"]["last_step"]
    assert sft["step"] == 1 and sft["sft/demos"] > 0 and np.isfinite(sft["sft/loss"])
    for name in STAGES[1:]:
        m = report["stages"][name]["last_step"]
        assert m["step"] == 1 and m["batch/episodes"] == 2 and m["ppo/grad_norm"] > 0, (name, m)
    both = report["stages"]["stage3"]["last_step"]
    assert both["ppo/trained_tokens"] == 2 * both["length/policy_tokens"]  # plan and action tokens
    # stage 2 trains the plan only: fewer tokens than the episodes' policy tokens
    plan = report["stages"]["stage2"]["last_step"]
    assert 0 < plan["ppo/trained_tokens"] < 2 * plan["length/policy_tokens"]
    with open(os.path.join(out, "stage3_only", "init.json")) as f:  # stage 3 alone starts from the warm start
        assert json.load(f)["init_from"] == os.path.join(out, "sft", "checkpoints", "final")
    assert "[stage3_only] step 1" in text and "Held-out success" in text


@pytest.mark.slow
def test_demonstrations_are_in_smollm2s_chat_template_with_the_loss_on_policy_tokens(run):
    import transformers

    from pilotrl_jax.agent.spans import SpanKind
    from pilotrl_jax.rl import masks

    out, _, report = run
    tok = transformers.AutoTokenizer.from_pretrained(report["hf_dir"])
    with np.load(os.path.join(out, "sft", "demos.npz")) as z:
        ids, kinds = z["input_ids"], z["kind_ids"]
    assert ids.shape[0] == report["stages"]["sft"]["last_step"]["sft/demos"]
    loss = np.asarray(masks.loss_mask(kinds, ("plan", "action")))
    trained = tok.decode(ids[loss > 0].tolist())
    assert "<global_plan>" in trained and "<action>" in trained and "<thought>" in trained
    assert "<|im_start|>" not in trained.replace("<|im_start|>assistant", "") and "Observation" not in trained
    first = tok.decode(ids[0][kinds[0] == int(SpanKind.PROMPT)].tolist())
    assert first.startswith("<|im_start|>system\n") and "<|im_start|>user\n" in first
    assert first.endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_results_rows_curves_and_export(run):
    import transformers

    out, _, report = run
    with open(os.path.join(out, "results.json")) as f:
        rows = json.load(f)["runs"]
    models = ["warm_start", "stage1", "stage2", "stage3", "stage3_only"]
    assert [(r["model"], r["mode"]) for r in rows] == [(m, mode) for m in models for mode in ("adaplan", "react")]
    for r in rows:
        assert r["episodes"] == 1 and r["split"] == "heldout" and 0.0 <= r["success_rate"] <= 1.0
        assert r["success_std_over_samples"] == 0.0 and r["format_errors_per_episode"] >= 0.0
    assert os.path.getsize(os.path.join(out, "curves.png")) > 0
    c = report["export_check"]
    assert c["hf_class"] == "LlamaForCausalLM" and c["max_abs_logit_diff"] <= c["tol"] and c["tokens"] > 100
    assert c["argmax_agreement"] == 1.0 and c["checkpoint"] == report["final"]
    assert report["final"].endswith(os.path.join("stage3_only", "checkpoints", "final"))
    cfg = transformers.AutoConfig.from_pretrained(report["hf_dir"])
    assert cfg.tie_word_embeddings and cfg.num_hidden_layers == 30 and cfg.vocab_size == 49152
    assert os.path.exists(os.path.join(report["hf_dir"], "tokenizer.json"))


def test_check_export_needs_an_exported_dir(tmp_path):
    from pilotrl_jax.experiments.real_model import check_export

    with pytest.raises(FileNotFoundError, match="hf_dir"):
        check_export(str(tmp_path / "nowhere"), str(tmp_path))


def test_format_rows_shows_the_spread_over_samples():
    from pilotrl_jax.experiments.real_model import format_rows

    rows = [dict(model="stage3", mode="adaplan", success_rate=0.25, success_std_over_samples=0.05, episodes=128,
                 pass_at_k=0.5, samples_per_task=4, format_errors_per_episode=0.12)]
    text = format_rows(rows)
    assert "stage3" in text and "25.0%" in text and "5.0%" in text and "50.0%" in text and "0.12" in text
