"""Training checkpoints: an Orbax CheckpointManager with async saves, keep-last-N, a best copy,
metadata (stage, step, config, git commit, data position, RNG), resume, and corruption fallback.
Several hosts: every host calls save/restore (Orbax writes each host's shards); process 0 alone
writes the model config and clears an old best/final copy.

Layout under `DIR` (one per stage: `WORKDIR/<stage>/checkpoints`):
    DIR/model_config.json            the model config (so `python -m pilotrl_jax.export DIR` works)
    DIR/<step>/params                policy params (Orbax, sharded arrays saved from every host)
    DIR/<step>/state                 the rest of the TrainState (optimizer, critic, step, rng)
    DIR/<step>/meta                  JSON metadata
    DIR/best/                        params of the best evaluation so far (param_store layout)
    DIR/final/                       params at the end of the stage (param_store layout)
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from pilotrl_jax import distributed as dist
from pilotrl_jax.models import param_store
from pilotrl_jax.models.config import LlamaConfig

log = logging.getLogger(__name__)


def git_commit() -> str:
    """The repository's HEAD commit (or 'unknown')."""
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001 - metadata only
        return "unknown"


def _abstract(tree):
    """ShapeDtypeStructs (with shardings) for restoring into the same layout as `tree`."""
    def one(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x
    return jax.tree.map(one, tree)


class Checkpointer:
    """Save/restore (params, rest-of-state, metadata) by step; keeps the last `keep` steps."""

    def __init__(self, directory: str, model_config: LlamaConfig, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        if jax.process_index() == 0:
            param_store.write_config(self.directory, model_config)
        self.model_config = model_config
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_names=("params", "state", "meta"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=async_save,
                                                 cleanup_tmp_directories=True),
        )

    # ------------------------------------------------------------------ saving
    def save(self, step: int, params, state_rest, meta: dict, force: bool = False) -> bool:
        """Queue an (async) save of step `step`; returns whether a save was started."""
        meta = dict(meta, step=int(step), git_commit=meta.get("git_commit") or git_commit())
        return self.manager.save(
            int(step),
            args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                    state=ocp.args.StandardSave(state_rest),
                                    meta=ocp.args.JsonSave(meta)),
            force=force,
        )

    def wait(self) -> None:
        """Block until pending async saves are on disk."""
        self.manager.wait_until_finished()

    def save_params_copy(self, name: str, params) -> str:
        """Write params to DIR/<name> (e.g. 'best', 'final') in the param_store layout."""
        path = os.path.join(self.directory, name)
        if jax.process_index() == 0 and os.path.exists(path):
            shutil.rmtree(path)
        dist.sync(f"checkpoint-{name}")  # several hosts: nobody writes before the old copy is gone
        return param_store.save_params(path, self.model_config, params)

    # ------------------------------------------------------------------ restoring
    def steps(self) -> list[int]:
        """Saved steps, oldest first."""
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def restore_latest(self, params_like, state_like) -> Optional[tuple[int, Any, Any, dict]]:
        """Restore the newest readable step → (step, params, state_rest, meta); None when none exists.

        A step that fails to restore (corrupted or partial files) is reported and skipped, and the
        previous one is tried.
        """
        for step in reversed(self.steps()):
            try:
                out = self.manager.restore(
                    step,
                    args=ocp.args.Composite(params=ocp.args.StandardRestore(_abstract(params_like)),
                                            state=ocp.args.StandardRestore(_abstract(state_like)),
                                            meta=ocp.args.JsonRestore()),
                )
            except Exception as e:  # noqa: BLE001 - any read failure means: try the previous step
                msg = (f"checkpoint step {step} in {self.directory} is unreadable "
                       f"({type(e).__name__}: {str(e)[:200]}); trying the previous one")
                log.warning(msg)
                print(f"WARNING: {msg}", flush=True)
                continue
            return step, out["params"], out["state"], dict(out["meta"])
        return None

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()
