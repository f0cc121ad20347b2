"""The optimizer of RL and SFT: AdamW with warmup/decay schedules, global-norm clipping, and an update
that is skipped when a loss or gradient is not finite."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from pilotrl_jax.rl.ppo_config import PPOConfig


def lr_schedule(lr: float, cfg: PPOConfig) -> optax.Schedule:
    """Learning-rate schedule over optimizer updates: linear warmup, then constant/cosine/linear."""
    end = lr * cfg.min_lr_ratio
    if cfg.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, cfg.warmup_steps, cfg.total_steps, end)
    if cfg.lr_schedule == "linear":
        decay = optax.linear_schedule(lr, end, cfg.total_steps - cfg.warmup_steps)
    else:
        decay = optax.constant_schedule(lr)
    if cfg.warmup_steps <= 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, cfg.warmup_steps), decay], [cfg.warmup_steps])


def make_optimizer(lr: float, cfg: PPOConfig) -> optax.GradientTransformation:
    """AdamW with the schedule and global-norm clipping; no weight decay on 1-D params (norms, biases)."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    adamw = optax.adamw(lr_schedule(lr, cfg), cfg.adam_b1, cfg.adam_b2, cfg.adam_eps,
                        weight_decay=cfg.weight_decay, mask=decay_mask)
    return adamw if cfg.max_grad_norm is None else optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw)


def _tree_all_finite(tree):
    """Scalar bool: every leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


def apply_update(tx, grads, opt_state, params, loss, allow=True):
    """One optimizer update, skipped (params and state kept) when the loss or a gradient is not finite
    or `allow` is False; returns (params, opt_state, grad norm, finite)."""
    gnorm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(gnorm) & _tree_all_finite(grads)
    ok = finite & allow
    safe_grads = jax.tree.map(lambda g: jnp.where(ok, g, 0.0), grads)
    updates, new_opt = tx.update(safe_grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    return keep(new_params, params), keep(new_opt, opt_state), gnorm, finite


def update_count(opt_state) -> jax.Array:
    """Number of optimizer updates so far, read from the Adam state inside `opt_state`."""
    for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)):
        if isinstance(s, optax.ScaleByAdamState):
            return s.count
    return jnp.zeros((), jnp.int32)
