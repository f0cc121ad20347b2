"""Ahead-of-time TPU compilation on this CPU host: the CLI on a tiny config and a small topology,
topology names, the fit rule, and named errors for configs that cannot work."""
import os
import subprocess
import sys

import pytest

from pilotrl_jax import aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tpu_tiny.py")
needs_libtpu = pytest.mark.skipif(
    __import__("importlib").util.find_spec("libtpu") is None,
    reason="libtpu not installed (pip install 'libtpu==0.0.42.*' to compile for TPU on CPU)")


@needs_libtpu
def test_cli_compiles_tiny_config_for_v5e_2x2():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    env["XLA_FLAGS"] = ""
    out = subprocess.run([sys.executable, "-m", "pilotrl_jax.aot", "--config", TINY, "--topology", "v5e:2x2",
                          "--buckets", "64"], env=env, capture_output=True, text=True, timeout=170, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    text = out.stdout
    assert "4 x TPU v5 lite, 16.00 GiB HBM/chip" in text
    assert "mesh {'data': 1, 'fsdp': 2, 'tensor': 2}" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| function")]
    names = [r.split("|")[1].strip() for r in rows]
    # the sampler at the trainer's own chunks (the engine's: prefill up to 256 tokens, here the 128-token
    # window; 64 decode steps), for the rollout engine and the held-out evaluation's (eval.temperature/top_p)
    assert names == ["ppo_step T=64", "logprobs T=64", "prefill C=128", "decode x64 (sample)",
                     "eval prefill C=128", "eval decode x64 (filtered)"]
    for r in rows:
        cells = [c.strip() for c in r.split("|")[1:-1]]
        assert cells[9] == "yes", r  # fits
    ppo_cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert ppo_cells[10] == f"{16 * 64:,}"  # tokens: 4 tasks x 4 rollouts x 64
    assert ppo_cells[6] != "0.0 KiB"  # the rollout engine's cache and params copy stay beside the PPO step
    assert "memory plan (analytic estimate" in text


def test_topology_names():
    assert aot.topology_name("v5p:2x2x4") == "v5p:2x2x4"
    assert aot.topology_name("v5p-32") == "v5p:2x2x4"
    assert aot.topology_name("v4-16") == "v4:2x2x2"
    assert aot.topology_name("v5litepod-16") == "v5e:4x4"
    assert aot.topology_name("v6e-8") == "v6e:2x4"
    with pytest.raises(aot.AOTError, match="slice name like 'v5p-32'"):
        aot.topology_name("tpu-big")
    with pytest.raises(aot.AOTError, match="no standard shape for 3 chips"):
        aot.topology_name("v5p-6")


def test_fit_rule_and_table():
    r = aot.Row("ppo_step T=8", "1x1x1 rows", 64, args=2 * aot.GIB, outputs=2 * aot.GIB, alias=2 * aot.GIB,
                temps=10 * aot.GIB, resident=0, hbm=16 * aot.GIB, model_flops=4e12)
    assert r.peak == 12 * aot.GIB and r.fits(0.9) and not r.fits(0.5)
    bad = aot.Row("decode x8", "B=8", 64, error="RESOURCE_EXHAUSTED", hbm=16 * aot.GIB)
    assert not bad.fits(0.9)
    info = dict(name="t", model="1M params", topology="v5e:2x2", chips=4, kind="TPU v5 lite", hbm=16 * aot.GIB,
                mesh={"data": 1}, rollouts=8, state_bytes=aot.GIB)
    table = aot.format_table([r, bad], info, 0.5)
    assert "| NO |" in table and "ERROR: RESOURCE_EXHAUSTED" in table and "12.00 GiB" in table


def test_tiny_geometry_and_config_errors():
    cfg = aot.load_config(TINY)
    assert aot.rollouts_per_step(cfg) == 16 and aot.sampler_rows(cfg) == 8 and aot.seq_buckets(cfg) == [64, 128]
    aot.check_geometry(cfg)
    pc = aot.ppo_config(cfg)
    assert (pc.num_mini_batches, pc.num_micro_batches) == (2, 4)
    cfg.rl.num_micro_batches = 3
    with pytest.raises(aot.AOTError, match="rl.num_micro_batches=6"):
        aot.ppo_config(cfg)
    cfg = aot.load_config(TINY)
    cfg.rl.clip_ratio = 0.2
    with pytest.raises(aot.AOTError, match="unknown keys \\['clip_ratio'\\]"):
        aot.ppo_config(cfg)
    cfg = aot.load_config(TINY)
    cfg.agent.token_budget = 1000
    with pytest.raises(aot.AOTError, match="largest bucket 128 is not the trainer's longest PPO batch 1024 "
                                           "\\(agent.token_budget=1000"):
        aot.check_geometry(cfg)
    cfg = aot.load_config(TINY)
    with pytest.raises(aot.AOTError, match="not an RL stage"):
        aot.stage_settings(cfg, "sft")
    del cfg.aot["seq_buckets"]
    assert aot.seq_buckets(cfg) == [64, 128]  # the trainer's buckets of 1/4, 1/2, all of the budget (at least 64)
    with pytest.raises(aot.AOTError, match="no file"):
        aot.load_config("configs/nope.py")


@needs_libtpu
def test_mesh_that_does_not_fit_the_topology_is_named():
    cfg = aot.load_config(TINY)
    cfg.mesh.tensor = 3
    with pytest.raises(aot.AOTError, match="config.mesh .* does not fit the topology \\(4 chips\\)"):
        aot.run(cfg, "v5e:2x2", parts=())


def test_shipped_8b_config_is_a_valid_trainer_config():
    from pilotrl_jax.train import config as C

    path = os.path.join(ROOT, "configs", "tpu_llama31_8b.py")
    cfg = aot.load_config(path)
    C.validate(cfg)
    assert C.pipeline(cfg) == ("stage1", "stage2", "stage3")
    mc = aot.model_config(cfg)
    assert 8.0e9 < mc.num_params < 8.1e9 and mc.rope_scaling[0] == "llama3"
    assert mc.scan_layers and mc.dtype == "bfloat16"
    assert aot.rollouts_per_step(cfg) == 4096 and aot.sampler_rows(cfg) == 32 == aot.sampler_rows(cfg, hosts=4)
    aot.check_geometry(cfg)
    for stage in ("stage1", "stage2", "stage3"):
        pc = aot.ppo_config(cfg, stage)
        assert 4096 // (pc.num_mini_batches * pc.num_micro_batches) == 4  # rows per micro-batch
    assert aot.topology_name(cfg.tpu.slice) == cfg.tpu.topology
    one = aot.load_config(path + ":stage2")
    assert C.pipeline(one) == ("stage2",)


@pytest.mark.parametrize("name, slice_, chips, fsdp, tensor, budget", [
    ("tpu_llama31_8b_v4.py", "v4-64", 32, 4, 8, 16384),
    ("tpu_llama31_8b_v5e.py", "v5litepod-64", 64, 8, 8, 8192),
])
def test_shipped_v4_and_v5e_configs_are_valid_trainer_configs(name, slice_, chips, fsdp, tensor, budget):
    from pilotrl_jax.train import config as C

    cfg = aot.load_config(os.path.join(ROOT, "configs", name))
    C.validate(cfg)
    assert C.pipeline(cfg) == ("stage1", "stage2", "stage3") and cfg.tpu.slice == slice_
    assert aot.topology_name(cfg.tpu.slice) == cfg.tpu.topology
    assert int(cfg.agent.token_budget) == budget and aot.seq_buckets(cfg)[-1] == budget
    assert aot.rollouts_per_step(cfg) == 4096
    aot.check_geometry(cfg)
    assert cfg.mesh.tensor == tensor and chips // tensor == fsdp
    for stage in ("stage1", "stage2", "stage3"):
        pc = aot.ppo_config(cfg, stage)
        assert (4096 // pc.num_mini_batches // pc.num_micro_batches) % fsdp == 0  # micro rows over fsdp groups
    hosts = chips // 4
    assert aot.sampler_rows(cfg, hosts=hosts) == int(cfg.rollout.max_batch)  # per host
    assert int(cfg.reward.max_response_len) <= budget - 2048


@needs_libtpu
def test_v4_topologies_have_one_device_per_chip():
    devs = aot.topology_devices("v4-16")  # 8 chips, 2 hosts; megacore: one device per chip
    assert len(devs) == 8 and aot.num_hosts(devs) == 2 and devs[0].device_kind == "TPU v4"


@needs_libtpu
def test_multi_host_topology_compiles_a_host_local_sampler():
    """On several hosts the sampler is compiled over one host's chips with its share of the rows."""
    cfg = aot.load_config(TINY)
    cfg.rollout.max_batch = 0  # all of a host's rows: 2 of the 4 tasks x 4 episodes
    rows, info = aot.run(cfg, "v5e:2x4", parts=("sampler",), log=lambda s: None)
    assert info["hosts"] == 2 and info["chips"] == 8
    assert info["sampler_mesh"] == {"data": 1, "fsdp": 2, "tensor": 2} and info["sampler_rows"] == 8
    assert [r.name for r in rows] == ["prefill C=128", "decode x64 (sample)", "eval prefill C=128",
                                      "eval decode x64 (filtered)"]
    assert all(not r.error and r.chips == 4 for r in rows)
    assert all(r.resident == info["state_bytes"] for r in rows)  # the whole train-state shard stays
    assert "2 hosts, each sampling on its own 4 chips" in aot.format_table(rows, info)
    # one host: the sampler shares the training mesh and rows, as before
    rows1, info1 = aot.run(aot.load_config(TINY), "v5e:2x2", parts=("sampler",), log=lambda s: None)
    assert info1["hosts"] == 1 and info1["sampler_mesh"] == info1["mesh"] and info1["sampler_rows"] == 8
    assert all(r.chips == 4 for r in rows1)


# ----------------------------------------------------------------------------- aot's shapes are the trainer's


def _episode(n_tokens: int):
    """A finished episode of `n_tokens` tokens (what the trainer pads into a PPO batch)."""
    from pilotrl_jax.agent.spans import Span, SpanKind
    from pilotrl_jax.rollout.batch import EpisodeResult

    return EpisodeResult(task_id="t", group_id=0, sample=0, seed=0, status="budget", score=0.0, won=False,
                         format_errors=0, num_turns=1, spans=[Span(SpanKind.PROMPT, [1] * n_tokens)])


def _trainer_batch_len(cfg, n_tokens: int) -> int:
    """The length the trainer pads a PPO batch to when its longest episode has `n_tokens` tokens."""
    from pilotrl_jax.rollout.batch import RolloutBatch
    from pilotrl_jax.train import trainer

    return RolloutBatch([_episode(n_tokens)]).to_arrays(trainer.seq_bucket(cfg))["input_ids"].shape[1]


def test_ppo_lengths_are_the_trainers_with_pad_multiple():
    cfg = aot.load_config(TINY)
    del cfg.aot["seq_buckets"]
    cfg.agent.token_budget, cfg.rollout.pad_multiple = 1000, 48
    longest = _trainer_batch_len(cfg, 1000)  # an episode that fills the token budget
    assert longest == 1008 and aot.seq_buckets(cfg)[-1] == longest
    for b in aot.seq_buckets(cfg):
        assert _trainer_batch_len(cfg, b) == b  # every compiled length is one the trainer pads to
    aot.check_geometry(cfg)
    cfg.aot["seq_buckets"] = (512, 1024)
    with pytest.raises(aot.AOTError, match=r"\[512, 1024\], which the trainer never pads .* multiples of "
                                           r"rollout.pad_multiple=48, at most 1008"):
        aot.check_geometry(cfg)
    cfg.aot["seq_buckets"] = (480, 960)
    with pytest.raises(aot.AOTError, match="largest bucket 960 is not the trainer's longest PPO batch 1008"):
        aot.check_geometry(cfg)
    cfg.rollout.pad_multiple = 0  # powers of two: 1000 tokens train at 1024
    del cfg.aot["seq_buckets"]
    assert aot.seq_buckets(cfg)[-1] == _trainer_batch_len(cfg, 1000) == 1024


def test_retired_chunk_keys_are_refused_by_name():
    cfg = aot.load_config(TINY)
    cfg.aot["prefill_chunk"] = 32
    with pytest.raises(aot.AOTError, match="config.aot.prefill_chunk is not read: the trainer's sampler engines use "
                                           "SamplerEngine's own prefill_chunk .*remove config.aot.prefill_chunk"):
        aot.check_geometry(cfg)


def test_sampler_shapes_are_the_trainers_engines(monkeypatch):
    """Run the trainer's own engine builders (`make_engine` for the rollout, `evaluate` for the held-out
    evaluation) at their worst case and record every prefill/decode call: aot compiles exactly those."""
    import types

    import jax

    from pilotrl_jax import sharding as sh
    from pilotrl_jax.agent.tokenizer import build_word_tokenizer
    from pilotrl_jax.models import llama
    from pilotrl_jax.rollout import SamplerPolicy
    from pilotrl_jax.sampling import engine as E
    from pilotrl_jax.train import evaluation, multihost, shapes

    cfg = aot.load_config(TINY)  # eval.temperature 0.6 / top_p 0.9 (filtered) vs the rollout's plain sampling
    cfg.eval.num_tasks = 3  # the evaluation engine: 3 rows, called as a sub-batch of 4
    tok = build_word_tokenizer(["<thought> go </thought> <action> look </action> <global_plan> 1 </global_plan>"] * 5,
                               vocab_size=300)
    mc = shapes.model_config(cfg).replace(vocab_size=len(tok))
    mesh = sh.make_mesh(dict(cfg.mesh.to_dict()), jax.devices()[:4])  # fsdp 2 x tensor 2, as on a v5e:2x2
    ctx = types.SimpleNamespace(cfg=cfg, model_cfg=mc, mesh=mesh, tokenizer=tok, env_factory=None)
    params = llama.init_params(mc, jax.random.PRNGKey(0), mesh=mesh)
    calls = []
    real_prefill, real_decode = E._prefill, E._decode

    def prefill(config, params, cache, ids, pos, *, mesh):
        calls.append(("prefill", ids.shape[0], ids.shape[1], jax.tree.leaves(cache)[0].shape[-3]))
        return real_prefill(config, params, cache, ids, pos, mesh=mesh)

    def decode(config, params, cache, state, *args, mode, chunk, mesh):
        calls.append(("decode", state["tok"].shape[0], chunk, jax.tree.leaves(cache)[0].shape[-3], mode))
        return real_decode(config, params, cache, state, *args, mode=mode, chunk=chunk, mesh=mesh)

    monkeypatch.setattr(E, "_prefill", prefill)
    monkeypatch.setattr(E, "_decode", decode)

    def worst_case(policy):  # every row busy with an episode at the cache's length
        eng = policy.engine
        # distinct first tokens: no shared prefix (its one-row prefill is no worst case)
        hs = policy.start([[2 + i] + [1] * (eng.max_len - 2) for i in range(eng.num_free)], seeds=list(range(eng.num_free)))
        policy.generate(hs, 1, stop_strings=None)
        policy.release(hs)

    # the rollout engine, sized and driven as run_rl_stage does
    st = aot.stage_settings(cfg)
    rows = min(multihost.plan_rows(mesh, st.tasks_per_step, st.group_size).local_rows, int(cfg.rollout.max_batch))
    r = cfg.rollout
    worst_case(SamplerPolicy(evaluation.make_engine(ctx, params, rows, seed=0), float(r.temperature), float(r.top_p),
                             int(r.top_k)))

    class Runner:  # evaluate's runner, reduced to the worst-case call
        def __init__(self, policy, *args, **kw):
            self.policy = policy

        def run(self, tasks):
            worst_case(self.policy)
            return types.SimpleNamespace(episodes=[])

    monkeypatch.setattr(evaluation, "RolloutRunner", Runner)
    held_out = [None] * int(cfg.env.num_eval_tasks)
    evaluation.evaluate(ctx, params, held_out[: int(cfg.eval.num_tasks)], group_size=int(cfg.eval.group_size),
                        progress=False)  # as final_eval calls it

    want = []
    for s in aot.sampler_shapes(cfg, row_shards=2):
        want += [("prefill", s.batch, s.prefill_chunk, s.window), ("decode", s.batch, s.decode_chunk, s.window, s.mode)]
    assert sorted(set(calls)) == sorted(want)
    assert [s.role for s in aot.sampler_shapes(cfg, row_shards=2)] == ["rollout", "eval"]
    assert ("decode", 4, 64, 128, "filtered") in calls and ("prefill", 8, 128, 128) in calls
