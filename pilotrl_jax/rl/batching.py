"""PPO batches on the mesh: their sharding, validation, and the micro-batch split inside jit."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from pilotrl_jax.rl.ppo_config import PPOConfig


def batch_sharding(mesh) -> NamedSharding:
    """Sharding of every [B, T] batch array: batch over the rules' 'batch' axes, length replicated."""
    from pilotrl_jax import sharding as sh

    return NamedSharding(mesh, sh.logical_to_spec(("batch", "length")))


def check_batch(batch: dict, cfg: PPOConfig, mesh, required: tuple) -> int:
    """Validate keys and shapes of a batch; returns B."""
    missing = [k for k in required if k not in batch]
    if missing:
        raise ValueError(f"batch lacks {missing}; ppo batches need {list(required)} (see pilotrl_jax.rl.ppo docs)")
    B, T = np.shape(batch["input_ids"])
    for k, v in batch.items():
        if tuple(np.shape(v)) != (B, T):
            raise ValueError(f"batch[{k!r}] has shape {tuple(np.shape(v))}; every batch array must be [B, T]={(B, T)}")
    n = cfg.num_mini_batches * cfg.num_micro_batches
    if B % n:
        raise ValueError(
            f"batch size {B} is not divisible by num_mini_batches*num_micro_batches={n}; pad the batch "
            f"(rows with loss_mask 0) or change the config"
        )
    if mesh is not None:
        shards = int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))
        if (B // n) % shards:
            raise ValueError(
                f"micro-batch size {B // n} is not divisible by the data*fsdp mesh size {shards}; "
                f"use a batch size that is a multiple of {n * shards}"
            )
    return B




def micro_split(x, n_outer: int, n_inner: int):
    """[B, ...] -> [n_outer, n_inner, B/(n_outer*n_inner), ...] keeping the per-chunk rows strided,
    so that a batch sharded on its leading axis stays sharded on the chunk's row axis."""
    mb = x.shape[0] // (n_outer * n_inner)
    y = x.reshape((mb, n_outer, n_inner) + x.shape[1:])
    return jnp.moveaxis(y, 0, 2)


def constrain(tree, mesh):
    """Shard the leading axis of every leaf over the batch axes (no-op without a mesh)."""
    if mesh is None:
        return tree
    s = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, s), tree)
