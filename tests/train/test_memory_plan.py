"""The memory plan: hand-computed estimates for a small model, the paper recipe on simulated GPU hosts
(derived rows or an error naming the keys, before anything is allocated), tiny configs unchanged."""
import dataclasses
import importlib.util
import os

import jax
import numpy as np
import pytest

from pilotrl_jax.models.config import LlamaConfig, run_config_overrides
from pilotrl_jax.train import memory_plan as MP
from pilotrl_jax.train import memory_terms as MT

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
H200 = 141 * MT.GIB


def _config(name: str, arg: str = ""):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg) if arg else mod.get_config()


def _llama_8b(cfg) -> LlamaConfig:
    """LLaMA-3.1-8B-Instruct (its config.json, as configs/tpu_llama31_8b.py holds it) with the run's numerics."""
    spec = importlib.util.spec_from_file_location("tpu8b", os.path.join(ROOT, "configs", "tpu_llama31_8b.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return LlamaConfig.from_hf_dict(mod.LLAMA31_8B_INSTRUCT, **run_config_overrides(cfg.model))


SMALL = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                    head_dim=16, dtype="bfloat16", param_dtype="float32", remat_policy="full", attention_query_chunk=32)
GEO = MT.Geometry(mesh=(1, 2, 1), sampler_mesh=(1, 2, 1), hosts=1, rows=16, micro_rows=4, seq_len=128, sampler_rows=8,
                  eval_rows=4, eval_rows_during=0, window=128, prefill_chunk=128)


def test_attention_entries_count_the_causal_blocks():
    for T, q in [(128, 32), (100, 32), (64, 0), (64, 128), (7, 3)]:
        blocks = [(a, min(a + q, T)) for a in range(0, T, q)] if 0 < q < T else [(0, T)]
        mask = np.zeros((T, T), bool)  # what each block reads: its queries x the keys up to its last query
        for a, b in blocks:
            mask[a:b, :b] = True
        assert MT.attention_entries(T, q) == mask.sum()


def test_estimate_matches_hand_computed_numbers():
    n = 1000 * 64 * 2 + 2 * (64 * 16 * (2 * 4 + 2 * 2) + 3 * 64 * 128 + 2 * 64) + 64
    assert SMALL.num_params == n == 202048
    shard = n * 4 // 2  # float32 params over fsdp 2
    kv = 2 * 2 * 4 * 128 * 2 * 16 * 2  # k+v x layers x 4 rows/device x 128 slots x 2 kv heads x 16 x bf16
    assert MT.param_bytes(SMALL, 2) == shard and MT.kv_cache_bytes(SMALL, 8, 128, (1, 2, 1)) == kv
    assert MT.kv_cache_bytes(SMALL, 7, 128, (1, 2, 1)) == 2 * 2 * 7 * 128 * 2 * 16 * 2  # 7 rows: not split
    e = MT.estimate(SMALL, GEO)
    terms = {t.name: t.bytes for t in e.phases["update"]}
    r, T = 2, 128  # micro-batch rows per device, tokens
    per_token = 64 * 2 + (4 * 16 + 2 * 2 * 16 + 2 * 128 + 2 * 64) * 4 + 2 * 128 * 2  # input, f32 matmul outputs, MLP
    probs = 4 * (128 * (128 + 32) // 2) * 6  # heads x causal-block entries x (f32 softmax + bf16 probs)
    assert terms == {
        "train state": 3 * shard, "rollout KV cache": kv,
        "gradients + optimizer temporaries": 3 * shard,
        "PPO batch (+ shuffled copy)": 2 * 8 * T * 4 * 6,
        "activations kept (full remat)": 2 * r * T * 64 * 2,
        "one layer's recompute": r * (T * per_token + probs),
        "LM-head logits": r * T * 1000 * 4 * 2,
    }
    assert e.total("update") == 5897984
    prefill = 4 * 4 * 128 * 128 * 6  # 4 rows/device x heads x chunk x window x (f32 scores + bf16 probs)
    assert e.total("rollout") == 3 * shard + kv + prefill
    assert e.total("eval") == shard + kv // 2 + prefill // 2
    assert e.peak == e.total("update") and e.peak_phase == "update"
    # a scanned model decodes from a per-layer copy of the params; 6 rollout rows are gathered as 8
    g6 = dataclasses.replace(GEO, sampler_rows=6)
    e6 = MT.estimate(SMALL.replace(scan_layers=True), g6)
    names = {t.name: t.bytes for t in e6.phases["rollout"]}
    assert names["sampler params copy"] == shard and names["prefill gathered rows"] == kv


def test_budget_comes_from_the_key_or_the_device():
    cfg = _config("demo")
    dev = MT.Devices(count=1, memory=80 * MT.GIB, kind="NVIDIA H100 80GB HBM3", source="memory_stats")
    assert MP.budget(cfg, dev)[0] == int(0.9 * 80 * MT.GIB)
    cfg.rollout.memory_budget_gib = 40.0
    assert MP.budget(cfg, dev) == (40 * MT.GIB, "config.rollout.memory_budget_gib=40")
    cfg.rollout.memory_budget_gib = -1.0
    assert MP.budget(cfg, dev)[0] == 0
    cfg.rollout.memory_budget_gib = 0.0
    assert MP.budget(cfg, MT.Devices(count=8, kind="cpu"))[0] == 0


def test_cpu_skips_the_plan_and_tiny_configs_are_unchanged():
    local = MP.local_devices()  # the tests' 8 fake CPU devices report no memory
    assert local.kind == "cpu" and local.memory == 0
    for name in ("demo", "smoke"):
        cfg = _config(name)
        before = cfg.to_dict()
        logged = []
        assert MP.check(cfg, local, log=logged.append) == []
        assert "memory plan: skipped on 8 x cpu" in logged[0] and "config.rollout.memory_budget_gib" in logged[0]
        # on a GPU the tiny run fits as it is: nothing derived, nothing refused
        gpu = MT.Devices(count=1, memory=80 * MT.GIB, kind="NVIDIA H100 80GB HBM3")
        plans = MP.check(cfg, gpu, log=logged.append)
        assert plans and all(not p.fixes and p.max_batch is None for p in plans)
        assert cfg.to_dict() == before and int(cfg.rollout.max_batch) == 0


def test_paper_recipe_on_one_h200_is_refused_before_allocation():
    cfg = _config("pilotrl")
    live = len(jax.live_arrays())
    with pytest.raises(MT.MemoryPlanError) as err:
        MP.check(cfg, MT.Devices(count=1, memory=H200, kind="NVIDIA H200"), model_cfg=_llama_8b(cfg))
    msg = str(err.value)
    assert len(jax.live_arrays()) == live and int(cfg.rollout.max_batch) == 0  # nothing allocated or written
    assert "does not fit 1 x NVIDIA H200 (budget 126.9 GiB per device" in msg
    assert "stage 'stage1', 'stage2', 'stage3'" in msg  # one report for identical stages
    assert "rollout KV cache                      8.0 TiB  32 layers x 2 (k, v) x 8 kv heads x 128 x 2 B x " \
           "16384 slots x 4096 rows per device" in msg
    assert "even with 1 row per micro-batch (config.rl.num_micro_batches) and 1 rollout row " \
           "(config.rollout.max_batch)" in msg
    assert "more devices alone do not help" in msg and "config.model.remat_policy='full'" in msg
    assert "config.model.param_dtype='bfloat16'" in msg and "config.rl.logits_chunk_size=1024" in msg
    assert "set config.eval.num_tasks x config.eval.group_size <=" in msg


def test_paper_recipe_on_an_8_gpu_host_names_the_keys_then_derives_rows():
    gpus = MT.Devices(count=8, memory=H200, kind="NVIDIA H200")
    cfg = _config("pilotrl")
    with pytest.raises(MT.MemoryPlanError, match=r"config.model.remat_policy='full': fits \(.* GiB\), with "
                                                 r"config.rl.num_micro_batches >= 64"):
        MP.check(cfg, gpus, model_cfg=_llama_8b(cfg))
    cfg.model.remat_policy = "full"  # the micro-batch (1024 rows) is next
    with pytest.raises(MT.MemoryPlanError, match=r"config.rl.num_micro_batches=1 makes micro-batches of 1024 rows x "
                                                 r"16384 tokens: .* set config.rl.num_micro_batches=64 \(16 rows"):
        MP.check(cfg, gpus, model_cfg=_llama_8b(cfg))
    cfg.rl.num_micro_batches, cfg.eval.num_tasks = 128, 48  # 1 row per GPU; 48 held-out rows split over 8 GPUs
    logged = []
    plans = MP.check(cfg, gpus, model_cfg=_llama_8b(cfg), log=logged.append)
    rows = int(cfg.rollout.max_batch)
    assert rows == plans[0].max_batch and rows < 4096 and rows % 8 == 0 and (rows // 8) & (rows // 8 - 1) == 0
    assert f"rollout.max_batch=0 -> {rows} rollout rows per host" in logged[0]
    limit = int(0.9 * H200)
    assert all(p.estimate.train_peak <= limit and not p.fixes for p in plans)
    # twice the derived rows is refused by name, with the value that fits
    cfg.rollout.max_batch = 2 * rows
    with pytest.raises(MT.MemoryPlanError, match=rf"config.rollout.max_batch={2 * rows} needs a KV cache of .* per "
                                                 rf"device .* set config.rollout.max_batch <= {rows} \(or 0 to derive"):
        MP.check(cfg, gpus, model_cfg=_llama_8b(cfg))


def test_shipped_tpu_configs_fit_their_slices():
    """The v5p-32 / v4-64 / v5litepod-64 configs pass the plan at their per-chip HBM (aot measures them exactly)."""
    for name, chips, hosts, hbm in [("tpu_llama31_8b", 16, 4, 95), ("tpu_llama31_8b_v4", 32, 8, 32),
                                    ("tpu_llama31_8b_v5e", 64, 16, 16)]:
        cfg = _config(name)
        plans = MP.check(cfg, MT.Devices(count=chips, hosts=hosts, memory=hbm * MT.GIB, kind=name),
                         model_cfg=_llama_8b(cfg), log=lambda s: None)
        assert plans and all(not p.fixes for p in plans), name


def test_trainer_checks_the_plan_before_building_anything(monkeypatch, tmp_path):
    from pilotrl_jax.train import setup, trainer

    def built(*a, **kw):
        raise AssertionError("build_context ran before the memory plan")

    monkeypatch.setattr(setup, "build_context", built)
    cfg = _config("smoke")
    cfg.rollout.memory_budget_gib = 1e-6  # ~1 KiB per device: nothing fits
    with pytest.raises(MT.MemoryPlanError, match="budget 0.0 GiB per device: config.rollout.memory_budget_gib=1e-06"):
        trainer.run_pipeline(cfg, str(tmp_path))
