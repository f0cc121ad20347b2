"""The PPO TrainState (policy and critic params, optimizer states, step, rng), its initialisation and
its shardings from the project's rules table."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from pilotrl_jax.models import llama
from pilotrl_jax.models.config import LlamaConfig
from pilotrl_jax.rl.optimizer import make_optimizer
from pilotrl_jax.rl.ppo_config import PPOConfig
from pilotrl_jax.rl.scoring import init_critic_params


@flax.struct.dataclass
class TrainState:
    """Everything the PPO step updates: policy (+ optional critic) params, optimizer states, step, rng."""

    params: Any
    opt_state: Any
    critic_params: Any
    critic_opt_state: Any
    step: jax.Array  # number of ppo_step calls (optax states count optimizer updates)
    rng: jax.Array


def init_train_state(model_cfg: LlamaConfig, cfg: PPOConfig, params, rng: jax.Array, critic_params=None, mesh=None) -> TrainState:
    """A TrainState from policy params (critic initialised from them when cfg.use_critic); placed on `mesh` if given."""
    if cfg.use_critic and critic_params is None:
        critic_params = init_critic_params(params)
    if not cfg.use_critic:
        critic_params = None
    tx = make_optimizer(cfg.lr, cfg)
    ctx = make_optimizer(cfg.critic_lr, cfg)

    def build(params, critic_params, rng):
        return TrainState(
            params=params,
            opt_state=tx.init(params),
            critic_params=critic_params,
            critic_opt_state=None if critic_params is None else ctx.init(critic_params),
            step=jnp.zeros((), jnp.int32),
            rng=rng,
        )

    if mesh is None:
        return jax.jit(build)(params, critic_params, rng)
    shardings = train_state_shardings(model_cfg, cfg, mesh)
    return jax.jit(build, out_shardings=shardings)(params, critic_params, rng)


def _critic_param_shardings(model_cfg, mesh):
    """Shardings of critic params: the policy's rules for the backbone, replicated head."""
    ps = llama.param_shardings(model_cfg, mesh)
    rep = NamedSharding(mesh, P())
    return {"backbone": {k: v for k, v in ps.items() if k != "lm_head"}, "head": {"kernel": rep, "bias": rep}}


def train_state_shardings(model_cfg: LlamaConfig, cfg: PPOConfig, mesh) -> TrainState:
    """NamedShardings of every TrainState leaf from the project's rules table (optimizer moments follow params)."""
    rep = NamedSharding(mesh, P())
    ps = llama.param_shardings(model_cfg, mesh)
    pshape = llama.param_shapes(model_cfg)
    tx = make_optimizer(cfg.lr, cfg)

    def opt_shardings(tx, shapes, shards):
        state_shape = jax.eval_shape(tx.init, shapes)
        return optax.tree_utils.tree_map_params(
            tx, lambda _, s: s, state_shape, shards, transform_non_params=lambda _: rep,
            is_leaf=lambda x: isinstance(x, NamedSharding),
        )

    out = TrainState(params=ps, opt_state=opt_shardings(tx, pshape, ps), critic_params=None,
                     critic_opt_state=None, step=rep, rng=rep)
    if cfg.use_critic:
        cps = _critic_param_shardings(model_cfg, mesh)
        cshape = jax.eval_shape(init_critic_params, pshape)
        out = out.replace(critic_params=cps, critic_opt_state=opt_shardings(make_optimizer(cfg.critic_lr, cfg), cshape, cps))
    return out
