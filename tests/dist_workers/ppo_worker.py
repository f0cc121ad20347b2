"""One process of a multi-process PPO run on CPU, as each worker of a TPU pod would run it.

Started by tests/test_distributed.py (N copies, loopback coordinator):
    python tests/dist_workers/ppo_worker.py --mode train|resume --workdir DIR --steps 3 --save-at 2
Env: PILOTRL_COORDINATOR, PILOTRL_NUM_PROCESSES, PILOTRL_PROCESS_ID, PILOTRL_CPU_DEVICES.

train: init -> steps 1..N, an Orbax checkpoint of the sharded TrainState after step `save-at`
(written by every process), as if preempted there. resume: restore the latest checkpoint and run
the remaining steps. Process 0 writes DIR/<mode>.json with per-step metrics and a params fingerprint.
"""
import argparse
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pilotrl_jax import distributed as dist  # noqa: E402

dist.initialize()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from pilotrl_jax import sharding as sh  # noqa: E402
from pilotrl_jax.models import llama  # noqa: E402
from pilotrl_jax.models.config import LlamaConfig  # noqa: E402
from pilotrl_jax.rl import metrics as M  # noqa: E402
from pilotrl_jax.rl import ppo  # noqa: E402

MC = LlamaConfig.tiny(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8)
CFG = ppo.PPOConfig(lr=1e-3, num_mini_batches=2, num_micro_batches=1, epochs=1)
B, T = 16, 12
MESH = {"data": 2, "fsdp": -1, "tensor": 2}


def rollout(step: int) -> dict:
    """The global rollout batch of a step (deterministic in the step: a resumed run sees the same data)."""
    rng = np.random.default_rng(1000 + step)
    ids = rng.integers(3, MC.vocab_size, (B, T)).astype(np.int32)
    lm = (rng.random((B, T)) < 0.6).astype(np.float32)
    lm[:, :3] = 0
    return dict(input_ids=ids, attention_mask=np.ones((B, T), np.int32), loss_mask=lm,
                scores=(ids[:, -1] % 2).astype(np.float32), group_ids=np.repeat(np.arange(4), B // 4).astype(np.int32))


def fingerprint(params) -> list:
    """Per-leaf float64 sums of the (gathered) params."""
    host = dist.to_host(params)
    return [float(np.asarray(x, np.float64).sum()) for x in jax.tree.leaves(host)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("train", "resume"), required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--save-at", type=int, default=2)
    a = p.parse_args()

    mesh = sh.make_mesh(MESH, jax.devices())
    fns = ppo.build(MC, CFG, mesh=mesh)
    abstract = jax.tree.map(lambda s, shd: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=shd),
                            jax.eval_shape(lambda: ppo.init_train_state(MC, CFG, llama.param_shapes(MC),
                                                                        jax.random.PRNGKey(1))),
                            ppo.train_state_shardings(MC, CFG, mesh))
    mngr = ocp.CheckpointManager(os.path.join(os.path.abspath(a.workdir), "ckpt"),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=2))
    start = mngr.latest_step()
    if a.mode == "resume":
        if start is None:
            sys.exit("resume: no checkpoint in workdir")
        state = mngr.restore(start, args=ocp.args.StandardRestore(abstract))
        dist.log0("restored step %d", start)
    else:
        if start is not None:
            sys.exit("train: workdir already has checkpoints")
        start = 0
        params = llama.init_params(MC, jax.random.PRNGKey(0), mesh=mesh)
        state = ppo.init_train_state(MC, CFG, params, jax.random.PRNGKey(1), mesh=mesh)
    rows = dist.process_rows(mesh, B)
    record = {"process_count": jax.process_count(), "devices": len(jax.devices()),
              "local_devices": len(jax.local_devices()), "rows": [rows.start, rows.stop],
              "start": int(start), "steps": {}}
    for step in range(start + 1, a.steps + 1):
        glob = rollout(step)
        local = {k: v[rows] for k, v in glob.items()}
        roll = dist.global_batch(local, mesh, B)
        batch = fns.prepare(state, roll)
        state, mets = fns.step(state, batch)
        m = M.finalize(dist.to_host(mets))
        record["steps"][step] = {"metrics": m, "fingerprint": fingerprint(state.params),
                                 "state_step": int(dist.to_host(state.step))}
        dist.log0("step %d policy_loss %.6f grad_norm %.6f", step, m["policy_loss"], m["grad_norm"])
        if a.mode == "train" and step == a.save_at:
            mngr.save(step, args=ocp.args.StandardSave(state))
            mngr.wait_until_finished()
            record["saved"] = step
            record["embed_shards_local"] = len(state.params["embed"].addressable_shards)
    mngr.close()
    dist.sync("done")
    if dist.is_coordinator():
        with open(os.path.join(a.workdir, f"{a.mode}.json"), "w") as f:
            json.dump(record, f)
    dist.shutdown()


if __name__ == "__main__":
    main()
