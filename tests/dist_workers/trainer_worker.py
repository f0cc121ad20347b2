"""One process of a multi-host trainer run on CPU, as each worker of a TPU pod would run it.

Started by tests/test_multihost_trainer.py (2 copies, loopback coordinator; env PILOTRL_*):
    python tests/dist_workers/trainer_worker.py --mode helpers|train --workdir DIR

helpers: the multi-host pieces on synthetic data (row plans for a sharded, a replicated and a
         host-interleaved mesh, global batches from per-host rows, host-local param copies, JSON
         all-gather, metric reduction); every process writes DIR/helpers_<p>.json.
train:   the real trainer (`run_pipeline`) on the tiny env: SFT then one RL stage with a periodic
         and a final evaluation. Every process records the tasks its rollouts ran, its rows of each
         training batch (DIR/batch_<p>_<k>.npz), whether its MetricsWriter was enabled, and a
         fingerprint of its own full copy of the final params; DIR/train_<p>.json.
"""
import argparse
import importlib.util
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from pilotrl_jax import distributed as dist  # noqa: E402

dist.initialize()

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from pilotrl_jax import sharding as sh  # noqa: E402
from pilotrl_jax.train import multihost  # noqa: E402


def fingerprint(params) -> list:
    """Per-leaf float64 sums of a fully addressable params tree."""
    return [float(np.asarray(x, np.float64).sum()) for x in jax.tree.leaves(jax.device_get(params))]


def trainer_config():
    """tests/dist_workers/trainer_config.py (loaded by path)."""
    spec = importlib.util.spec_from_file_location("trainer_config", os.path.join(HERE, "trainer_config.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


# ----------------------------------------------------------------------------- helpers


def helpers(workdir: str) -> None:
    pidx = jax.process_index()
    out: dict = {"process": pidx, "local_device_ids": sorted(d.id for d in jax.local_devices())}
    devs = jax.devices()
    G, n_tasks = 2, 4
    rows = n_tasks * G

    def local_rows(plan):
        ids = np.stack([np.full(6, 10 * g + s, np.int32) for g in plan.groups for s in range(G)])
        return {"input_ids": ids, "group_ids": np.repeat(np.asarray(plan.groups, np.int32), G)}

    layouts = {
        "sharded": sh.make_mesh({"data": 1, "fsdp": -1, "tensor": 1}, devs),
        "replicated": sh.make_mesh({"data": 1, "fsdp": 1, "tensor": -1}, devs),
        # a topology-ordered mesh can interleave hosts: every host then owns every other row
        "interleaved": sh.make_mesh({"data": 1, "fsdp": -1, "tensor": 1},
                                    [d for pair in zip(devs[:4], devs[4:]) for d in pair]),
    }
    want = np.stack([np.full(6, 10 * g + s, np.int32) for g in range(n_tasks) for s in range(G)])
    for name, mesh in layouts.items():
        plan = multihost.plan_rows(mesh, n_tasks, G)
        glob = multihost.global_training_batch(local_rows(plan), plan, mesh)
        full = dist.to_host(glob)
        out[name] = {"mode": plan.mode, "groups": list(plan.groups), "reason": plan.reason,
                     "global_ok": bool(np.array_equal(full["input_ids"], want)),
                     "group_ids": [int(x) for x in full["group_ids"]]}
    # non-contiguous per-host blocks, each a whole group (G=1), assembled without a gather
    mesh = layouts["interleaved"]
    plan = multihost.plan_rows(mesh, 8, 1)
    ids = np.asarray([[10 * g] * 6 for g in plan.groups], np.int32)
    glob = multihost.global_training_batch({"input_ids": ids}, plan, mesh)
    out["interleaved_g1"] = {"mode": plan.mode, "blocks": [[b.start, b.stop] for b in plan.blocks],
                             "global_ok": bool(np.array_equal(dist.to_host(glob)["input_ids"][:, 0],
                                                              10 * np.arange(8)))}
    # host-local copies of globally sharded params
    from pilotrl_jax.models import llama
    from pilotrl_jax.models.config import LlamaConfig

    mc = LlamaConfig.tiny(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=8)
    mesh = layouts["sharded"]
    params = llama.init_params(mc, jax.random.PRNGKey(0), mesh=mesh)
    meshes = [sh.make_mesh(multihost.sampler_mesh_shape({"tensor": 2}, 4), dist.process_devices(p)) for p in range(2)]
    specs = jax.tree.map(lambda s: s.spec, llama.param_shardings(mc, meshes[pidx]))
    local = dist.host_local_copies(params, meshes, specs)
    leaves = jax.tree.leaves(local)
    out["local_copy"] = {"addressable": all(x.is_fully_addressable for x in leaves),
                         "devices": sorted({d.id for x in leaves for d in x.sharding.device_set}),
                         "fingerprint": fingerprint(local),
                         "global_fingerprint": [float(np.asarray(dist.to_host(x), np.float64).sum())
                                                for x in jax.tree.leaves(params)]}
    out["allgather_json"] = dist.allgather_json({"p": pidx, "pad": "x" * (100 * pidx + 3)})
    out["max_over_hosts"] = dist.max_over_hosts(17 + 50 * pidx)
    out["any_host"] = [dist.any_host(pidx == 1), dist.any_host(False)]
    with open(os.path.join(workdir, f"helpers_{pidx}.json"), "w") as f:
        json.dump(out, f)


# ----------------------------------------------------------------------------- train


def train(workdir: str) -> None:
    from pilotrl_jax.train import evaluation, metrics
    from pilotrl_jax.train import setup as S
    from pilotrl_jax.train import trainer as T

    pidx = jax.process_index()
    rec: dict = {"process": pidx, "runs": [], "writers": [], "batches": 0}

    class RecordingRunner(T.RolloutRunner):
        """RolloutRunner that records which tasks this host ran."""

        def run(self, tasks):
            batch = super().run(tasks)
            rec["runs"].append({"tasks": [t.task_id for t in tasks], "episodes": len(batch.episodes),
                                "seed": int(self.config.seed)})
            return batch

    T.RolloutRunner = RecordingRunner
    evaluation.RolloutRunner = RecordingRunner
    real_gtb = multihost.global_training_batch

    def recording_gtb(local, plan, mesh):
        np.savez(os.path.join(workdir, f"batch_{pidx}_{rec['batches']}.npz"), **local)
        rec["batches"] += 1
        rec["plan"] = {"mode": plan.mode, "groups": list(plan.groups)}
        return real_gtb(local, plan, mesh)

    multihost.global_training_batch = recording_gtb
    real_init = metrics.MetricsWriter.__init__

    def recording_init(self, directory, *a, **k):
        real_init(self, directory, *a, **k)
        rec["writers"].append([os.path.basename(directory), bool(self.enabled)])

    metrics.MetricsWriter.__init__ = recording_init
    cfg = trainer_config()
    out = T.run_pipeline(cfg, os.path.join(workdir, "run"))
    rec["eval"] = out["stage1"]["eval"]
    # this host's own full copy of the final params (what its sampler would use)
    ctx = S.build_context(cfg, os.path.join(workdir, "run"))
    params = S.load_params_any(out["stage1"]["final"], False, ctx.model_cfg, ctx.mesh)
    rec["fingerprint"] = fingerprint(multihost.sampler_params(ctx, params))
    with open(os.path.join(workdir, f"train_{pidx}.json"), "w") as f:
        json.dump(rec, f)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("helpers", "train"), required=True)
    p.add_argument("--workdir", required=True)
    a = p.parse_args()
    (helpers if a.mode == "helpers" else train)(a.workdir)
    dist.sync("done")
    dist.shutdown()


if __name__ == "__main__":
    main()
