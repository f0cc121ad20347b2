"""The trainer on two hosts: two jax.distributed CPU processes (loopback coordinator) run the real
trainer on the tiny env, as two workers of a TPU pod would. Also: the multi-host helpers on
synthetic data, single-process identities, and the metric reduction."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from pilotrl_jax.train import multihost

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "dist_workers", "trainer_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(mode: str, workdir: str, devices: int, timeout: int = 300) -> list:
    """Run 2 worker processes on a loopback coordinator; returns their outputs."""
    port = _free_port()
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if "xla_force_host_platform_device_count" not in f)
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
               PILOTRL_COORDINATOR=f"127.0.0.1:{port}", PILOTRL_NUM_PROCESSES="2",
               PILOTRL_CPU_DEVICES=str(devices), TOKENIZERS_PARALLELISM="false")
    procs = [subprocess.Popen([sys.executable, WORKER, "--mode", mode, "--workdir", workdir],
                              env=dict(env, PILOTRL_PROCESS_ID=str(i)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"{mode} worker {i} failed:\n{out[-4000:]}"
    return outs


# ----------------------------------------------------------------------------- single process


def test_single_process_is_the_identity():
    plan = multihost.plan_rows(None, 3, 4)
    assert plan.mode == "single" and plan.groups == (0, 1, 2) and plan.rows == plan.local_rows == 12
    assert multihost.host_seed(1234) == 1234 and multihost.host_seed(1234, 1) != 1234
    assert multihost.host_seed(1234, 1) != multihost.host_seed(1234, 2)
    row = {"reward/mean": 0.5}
    assert multihost.reduce_metrics([row], [4]) == row


def test_split_evenly_and_errors():
    parts = [list(multihost.split_evenly(7, 3, i)) for i in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    assert list(multihost.split_evenly(1, 2, 1)) == []
    with pytest.raises(ValueError, match="index=2 parts=2"):
        multihost.split_evenly(4, 2, 2)
    with pytest.raises(ValueError, match="one weight per host"):
        multihost.reduce_metrics([{}, {}], [1])


def test_reduce_metrics_over_hosts():
    a = {"reward/mean": 1.0, "status/success": 2, "time/step_s": 3.0, "rollout/wall_s": 5.0, "judge/requests": 4,
         "judge/latency_max_s": 0.5, "judge/latency_mean_s": 0.2, "reward/plan_score": 0.0, "name": "x"}
    b = {"reward/mean": 0.0, "status/success": 1, "time/step_s": 4.0, "rollout/wall_s": 2.0, "judge/requests": 6,
         "judge/latency_max_s": 0.9, "judge/latency_mean_s": 0.4, "reward/plan_score": 0.8, "name": "x"}
    r = multihost.reduce_metrics([a, b], [6, 2], [{"reward/plan_score": 0}, {"reward/plan_score": 3}])
    assert r["reward/mean"] == pytest.approx(0.75)  # weighted by episodes
    assert r["status/success"] == 3 and r["judge/requests"] == 10  # counts add up
    assert r["time/step_s"] == 4.0 and r["rollout/wall_s"] == 5.0 and r["judge/latency_max_s"] == 0.9
    assert r["judge/latency_mean_s"] == pytest.approx(0.25)
    assert r["reward/plan_score"] == pytest.approx(0.8)  # only the host whose plans were scored
    assert r["name"] == "x" and list(r) == list(a)


def test_sampler_mesh_shape():
    assert multihost.sampler_mesh_shape({"data": 1, "fsdp": -1, "tensor": 4}, 4) == {"data": 1, "fsdp": 1, "tensor": 4}
    assert multihost.sampler_mesh_shape({"tensor": 4}, 8) == {"data": 1, "fsdp": 2, "tensor": 4}
    assert multihost.sampler_mesh_shape({"tensor": 8}, 4) == {"data": 1, "fsdp": 4, "tensor": 1}
    assert multihost.sampler_mesh_shape({"tensor": -1}, 4) == {"data": 1, "fsdp": 4, "tensor": 1}


# ----------------------------------------------------------------------------- two processes


def test_two_process_helpers(tmp_path):
    _launch("helpers", str(tmp_path), devices=4, timeout=180)
    got = [json.load(open(tmp_path / f"helpers_{p}.json")) for p in (0, 1)]
    for p, h in enumerate(got):
        # rows over both hosts in whole groups: each host rolls out its own groups, no gather
        assert h["sharded"]["mode"] == "sharded" and h["sharded"]["groups"] == [[0, 1], [2, 3]][p]
        # rows replicated over the hosts (tensor parallelism across them): even split, then all-gathered
        assert h["replicated"]["mode"] == "gathered" and h["replicated"]["groups"] == [[0, 1], [2, 3]][p]
        assert "several hosts" in h["replicated"]["reason"]
        # hosts interleaved row by row: groups of 2 are cut, so gathered; groups of 1 use the blocks
        assert h["interleaved"]["mode"] == "gathered" and "cut groups" in h["interleaved"]["reason"]
        assert h["interleaved_g1"]["mode"] == "sharded"
        assert h["interleaved_g1"]["blocks"] == [[r, r + 1] for r in range(p, 8, 2)]  # 4 one-row blocks
        for name in ("sharded", "replicated", "interleaved"):
            assert h[name]["global_ok"], (p, name)
            assert h[name]["group_ids"] == [0, 0, 1, 1, 2, 2, 3, 3]
        assert h["interleaved_g1"]["global_ok"]
        lc = h["local_copy"]
        assert lc["addressable"] and lc["devices"] == h["local_device_ids"]  # on this host's devices only
        np.testing.assert_allclose(lc["fingerprint"], lc["global_fingerprint"], rtol=0, atol=0)
        assert h["allgather_json"] == [{"p": 0, "pad": "xxx"}, {"p": 1, "pad": "x" * 103}]
        assert h["max_over_hosts"] == 67 and h["any_host"] == [True, False]
    assert got[0]["local_copy"]["fingerprint"] == got[1]["local_copy"]["fingerprint"]


def test_two_process_trainer(tmp_path):
    """SFT + one RL stage on two hosts: disjoint rollouts, one global batch, identical params, process-0 files."""
    _launch("train", str(tmp_path), devices=1, timeout=400)  # 1 CPU device per host: fast host-local sampling
    rec = [json.load(open(tmp_path / f"train_{p}.json")) for p in (0, 1)]
    run = tmp_path / "run"
    # rollouts: per RL step each host ran its own GRPO group (4 episodes of one task), tasks disjoint;
    # evaluations split their 3 tasks 2 + 1
    rl = [[r for r in h["runs"] if r["episodes"] == 4] for h in rec]
    ev = [[r for r in h["runs"] if r["episodes"] != 4] for h in rec]
    assert len(rl[0]) == len(rl[1]) == 2
    for a, b in zip(*rl):
        assert len(a["tasks"]) == len(b["tasks"]) == 1 and not set(a["tasks"]) & set(b["tasks"])
        assert a["seed"] != b["seed"]  # independent sampling on each host
    assert [len(r["tasks"]) for r in ev[0]] == [2, 2, 2] and [len(r["tasks"]) for r in ev[1]] == [1, 1, 1]
    assert not set(ev[0][0]["tasks"]) & set(ev[1][0]["tasks"])
    assert rec[0]["plan"] == {"mode": "sharded", "groups": [0]} and rec[1]["plan"] == {"mode": "sharded", "groups": [1]}
    # each host built only its rows of the batch; both padded to the same agreed length
    for k in range(2):
        b0, b1 = (np.load(tmp_path / f"batch_{p}_{k}.npz") for p in (0, 1))
        assert b0["input_ids"].shape[0] == b1["input_ids"].shape[0] == 4
        assert b0["input_ids"].shape[1] == b1["input_ids"].shape[1]
        assert set(b0["group_ids"]) == {0} and set(b1["group_ids"]) == {1}
    # the trained params: every host's own full copy is the same, and equal to the saved checkpoint
    assert rec[0]["fingerprint"] == rec[1]["fingerprint"]
    from pilotrl_jax.models import param_store

    _, final = param_store.load_params(str(run / "stage1" / "checkpoints" / "final"))
    saved = [float(np.asarray(x, np.float64).sum()) for x in jax.tree.leaves(jax.device_get(final))]
    np.testing.assert_allclose(saved, rec[0]["fingerprint"], rtol=0, atol=0)
    # the RL update on the assembled global batch == one process stepping on both hosts' rows
    _check_first_rl_step(tmp_path)
    # files: only process 0 writes run-level files; Orbax shards from both processes
    assert [w for w in rec[0]["writers"]] == [["sft", True], ["stage1", True]]
    assert [w for w in rec[1]["writers"]] == [["sft", False], ["stage1", False]]
    rows = [json.loads(l) for l in open(run / "stage1" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2]  # one writer: no duplicated rows
    for r in rows:  # rollout metrics over both hosts' 8 episodes
        assert r["batch/episodes"] == 8 and sum(v for k, v in r.items() if k.startswith("status/")) == 8
    assert 0.0 <= rows[0]["eval/success"] <= 1.0  # the periodic evaluation (not after the last step)
    assert len([json.loads(l) for l in open(run / "sft" / "metrics.jsonl")]) == 2
    table = json.load(open(run / "stage1" / "eval.json"))
    # every host gets the same rows (over both hosts' episodes), less its own wall time
    untimed = [[{k: v for k, v in r.items() if k != "wall_s"} for r in t] for t in (table, rec[0]["eval"], rec[1]["eval"])]
    assert table[0]["episodes"] == 3 and untimed[0] == untimed[1] == untimed[2]
    lines = [json.loads(l) for l in open(run / "stage1" / "eval_adaplan.jsonl")]
    assert sorted(e["group_id"] for e in lines) == [0, 1, 2]
    assert (run / "stage1" / "init.json").exists() and (run / "curves.png").exists()
    for step in ("1", "2"):
        d = run / "stage1" / "checkpoints" / step / "params"
        for proc in (0, 1):
            assert (d / f"ocdbt.process_{proc}").is_dir(), f"no shards from process {proc} in {d}"
    assert (run / "stage1" / "checkpoints" / "best" / "params").is_dir()


def _check_first_rl_step(tmp_path):
    """Recompute stage1's first PPO step in this process from the SFT params and both hosts' rows."""
    import importlib.util

    from pilotrl_jax.models import param_store
    from pilotrl_jax.rl import metrics as M
    from pilotrl_jax.rl import ppo
    from pilotrl_jax.train import config as C

    spec = importlib.util.spec_from_file_location("trainer_config", os.path.join(ROOT, "tests", "dist_workers", "trainer_config.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config()
    st = C.resolve_stage(cfg, "stage1")
    run = tmp_path / "run"
    mc, params = param_store.load_params(str(run / "sft" / "checkpoints" / "final"))
    rows = [dict(np.load(tmp_path / f"batch_{p}_0.npz")) for p in (0, 1)]
    batch = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}  # group 0 (host 0), group 1 (host 1)
    fns = ppo.build(mc, st.ppo, None, donate=False)
    state = ppo.init_train_state(mc, st.ppo, params, jax.random.PRNGKey(int(cfg.seed) + 1))  # stage index 1
    state, mets = fns.step(state, fns.prepare(state, batch))
    _, got = param_store.load_params(str(run / "stage1" / "checkpoints" / "1"))
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(jax.device_get(got))))
    assert diff <= 1e-5, diff  # fp32 reduction order differs between 1 device and the 2-host mesh
    m = M.finalize(jax.device_get(mets))
    row = json.loads(open(run / "stage1" / "metrics.jsonl").readline())
    assert row["ppo/policy_loss"] == pytest.approx(m["policy_loss"], rel=1e-4, abs=1e-6)
