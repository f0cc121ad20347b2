"""Multi-host pieces: initialize() arguments, per-host rows and global batches, a two-process
jax.distributed PPO run with an Orbax checkpoint and resume, and the PPO step on 1 device vs a
sweep of 8-device mesh shapes."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from pilotrl_jax import distributed as dist
from pilotrl_jax import sharding as sh
from pilotrl_jax.models import llama
from pilotrl_jax.models.config import LlamaConfig
from pilotrl_jax.rl import metrics as M
from pilotrl_jax.rl import ppo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "dist_workers", "ppo_worker.py")


# ----------------------------------------------------------------------------- initialize / helpers


def test_initialize_without_coordinator_is_single_process(monkeypatch):
    for k in (dist.ENV_COORDINATOR, dist.ENV_NUM_PROCESSES, dist.ENV_PROCESS_ID, "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(k, raising=False)
    assert dist.initialize() is False
    assert dist.is_coordinator()


@pytest.mark.parametrize("kw, words", [
    (dict(coordinator_address="127.0.0.1:1"), ["num_processes", dist.ENV_PROCESS_ID]),
    (dict(coordinator_address="127.0.0.1:1", num_processes=2, process_id=2), ["process_id=2"]),
    (dict(coordinator_address="127.0.0.1", num_processes=2, process_id=0), ["port", "127.0.0.1:12355"]),
])
def test_initialize_errors_name_the_input(kw, words):
    with pytest.raises(ValueError) as e:
        dist.initialize(**kw)
    for w in words:
        assert w in str(e.value)


def test_initialize_rejects_non_integer_env(monkeypatch):
    monkeypatch.setenv(dist.ENV_COORDINATOR, "127.0.0.1:1")
    monkeypatch.setenv(dist.ENV_NUM_PROCESSES, "two")
    with pytest.raises(ValueError, match="PILOTRL_NUM_PROCESSES='two'"):
        dist.initialize()


def test_tpu_pod_detection(monkeypatch):
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2")
    assert not dist.on_tpu_pod()
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2,10.0.0.3")
    assert dist.on_tpu_pod()


def test_global_batch_single_process_matches_device_put():
    mesh = sh.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert dist.process_rows(mesh, 16) == slice(0, 16)
    local = {"ids": np.arange(16 * 3, dtype=np.int32).reshape(16, 3), "score": np.arange(16, dtype=np.float32)}
    glob = dist.global_batch(local, mesh)
    assert glob["ids"].sharding.spec == sh.batch_sharding(mesh, 2, 16).spec
    np.testing.assert_array_equal(np.asarray(glob["ids"]), local["ids"])
    np.testing.assert_array_equal(dist.to_host(glob)["score"], local["score"])
    with pytest.raises(ValueError, match="process_rows"):
        dist.global_batch(local, mesh, global_rows=32)
    with pytest.raises(ValueError, match="leading"):
        dist.global_batch({"a": np.zeros((16, 2)), "b": np.zeros((8,))}, mesh)


def test_log0_prints_on_process_zero(capsys):
    dist.log0("step %d loss %.1f", 3, 0.5)
    assert capsys.readouterr().out == "step 3 loss 0.5\n"
    dist.sync("noop")  # one process: a no-op


# ----------------------------------------------------------------------------- two processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(mode: str, workdir: str, n: int = 2, devices: int = 4) -> None:
    """Start n worker processes on a loopback coordinator and wait for all of them."""
    port = _free_port()
    env = dict(os.environ)
    # the parent's 8 fake devices must not leak: each worker sets its own count
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if "xla_force_host_platform_device_count" not in f)
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
               PILOTRL_COORDINATOR=f"127.0.0.1:{port}", PILOTRL_NUM_PROCESSES=str(n),
               PILOTRL_CPU_DEVICES=str(devices))
    procs = []
    for i in range(n):
        e = dict(env, PILOTRL_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, WORKER, "--mode", mode, "--workdir", workdir],
                                      env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"{mode} worker {i} failed:\n{out[-3000:]}"


def test_two_process_ppo_checkpoint_and_resume(tmp_path):
    wd = str(tmp_path)
    _launch("train", wd)
    train = json.load(open(os.path.join(wd, "train.json")))
    assert train["process_count"] == 2 and train["devices"] == 8 and train["local_devices"] == 4
    assert train["rows"] == [0, 8]  # process 0 produced the first half of the global batch
    assert train["saved"] == 2 and train["embed_shards_local"] == 4
    losses = [train["steps"][str(s)]["metrics"]["policy_loss"] for s in (1, 2, 3)]
    assert all(np.isfinite(losses))
    assert train["steps"]["3"]["fingerprint"] != train["steps"]["1"]["fingerprint"]  # params moved
    # every host wrote its own shards of the state
    ck = os.path.join(wd, "ckpt", "2", "default")
    for proc in (0, 1):
        d = os.path.join(ck, f"ocdbt.process_{proc}", "d")
        assert os.path.isdir(d) and os.listdir(d), f"no shard data from process {proc} in {ck}"

    _launch("resume", wd)  # as after a preemption: same command, same workdir
    resume = json.load(open(os.path.join(wd, "resume.json")))
    assert resume["start"] == 2 and list(resume["steps"]) == ["3"]
    a, b = train["steps"]["3"], resume["steps"]["3"]
    assert b["state_step"] == a["state_step"] == 3
    np.testing.assert_allclose(b["fingerprint"], a["fingerprint"], rtol=1e-6, atol=1e-6)
    for k, v in a["metrics"].items():
        assert b["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


# ----------------------------------------------------------------------------- mesh shape sweep

SWEEP_MC = LlamaConfig.tiny(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=8,
                            num_kv_heads=4, head_dim=4)
MESH_SHAPES = {
    "data-only": {"data": 8, "fsdp": 1, "tensor": 1},
    "fsdp-only": {"data": 1, "fsdp": 8, "tensor": 1},
    "tensor-only": {"data": 1, "fsdp": 1, "tensor": 8},
    "mixed-2x2x2": {"data": 2, "fsdp": 2, "tensor": 2},
}


def _sweep_rollout(B=16, T=10, seed=3):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, SWEEP_MC.vocab_size, (B, T)).astype(np.int32)
    attn = np.ones((B, T), np.int32)
    attn[-2:, -3:] = 0
    lm = (rng.random((B, T)) < 0.5).astype(np.float32) * attn
    lm[:, 0] = 0
    return dict(input_ids=ids, attention_mask=attn, loss_mask=lm, scores=rng.normal(size=B).astype(np.float32),
                group_ids=np.repeat(np.arange(4), B // 4).astype(np.int32))


SWEEP_CFG = ppo.PPOConfig(lr=1e-3, num_mini_batches=2, num_micro_batches=1, epochs=1)


def test_ppo_step_same_on_one_device_and_mesh_shapes():
    # one batch (old log-probs from 1 device) and one initial state, placed on each mesh
    params = llama.init_params(SWEEP_MC, jax.random.PRNGKey(0))
    state0 = ppo.init_train_state(SWEEP_MC, SWEEP_CFG, params, jax.random.PRNGKey(1))
    batch = ppo.build(SWEEP_MC, SWEEP_CFG, donate=False).prepare(state0, _sweep_rollout())
    ref_state, ref_m = ppo.make_ppo_step(SWEEP_MC, SWEEP_CFG, donate=False)(state0, batch)
    ref_params, ref_m = jax.device_get(ref_state.params), M.finalize(ref_m)
    for name, shape in MESH_SHAPES.items():
        mesh = sh.make_mesh(shape)
        state = jax.device_put(state0, ppo.train_state_shardings(SWEEP_MC, SWEEP_CFG, mesh))
        b = jax.device_put(batch, ppo.batch_sharding(mesh))
        new, m = ppo.make_ppo_step(SWEEP_MC, SWEEP_CFG, mesh, donate=False)(state, b)
        assert len(new.params["layers_0"]["mlp"]["w_up"].sharding.device_set) == 8, name
        got, m = jax.device_get(new.params), M.finalize(m)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(got)))
        assert diff <= 1e-5, (name, diff)  # fp32 reduction order differs per mesh; Adam updates are ~1e-3
        for k, v in ref_m.items():
            assert m[k] == pytest.approx(v, rel=1e-5, abs=1e-6), (name, k)
    # the sweep really shards differently: tensor-only splits heads, fsdp-only splits the embed dim
    wq = llama.param_shardings(SWEEP_MC, sh.make_mesh(MESH_SHAPES["tensor-only"]))["layers_0"]["attn"]["wq"]
    assert "tensor" in str(wq.spec)
    wq = llama.param_shardings(SWEEP_MC, sh.make_mesh(MESH_SHAPES["fsdp-only"]))["layers_0"]["attn"]["wq"]
    assert "fsdp" in str(wq.spec)
