"""The PPO update as a pure, jitted, sharded function: `ppo_step(state, batch) -> (state, metrics)`.

One call of `ppo_step` is one training step on one rollout batch: `epochs` passes, each over
`num_mini_batches` shuffled mini-batches (one optimizer update each), each mini-batch split into
`num_micro_batches` micro-batches whose gradients are accumulated inside jit (`lax.scan`). Losses use
the whole mini-batch's normalizer in every micro-batch, so accumulation is exact.

Batch: a dict of [B, T] arrays aligned with input_ids (entry t is about token t):
  input_ids (int32), attention_mask (int32, 1 = real token), loss_mask (float32, 1 = trained),
  advantages, old_logprobs (the trainer's log-probs before the update, from `make_logprob_fn`),
  and optionally positions, sampler_logprobs (for the sampler-vs-trainer metric), ref_logprobs
  (needed when kl_coef > 0 and the KL is in the loss), returns and old_values (needed with a critic).
`build(...).prepare(state, rollout)` builds it from a rollout batch (ids, masks, sampler log-probs, scores or rewards).

The pieces live in their own modules: `ppo_config` (PPOConfig), `optimizer`, `train_state`, `scoring`
(log-probs, entropies, values), `batching` (batch sharding and micro-batches); this module builds the
jitted functions from them and prepares a PPO batch from a rollout batch.

Metrics are exact (sum, count) pairs (`pilotrl_jax.rl.metrics`); `metrics.finalize` gives floats.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from pilotrl_jax.models import attention
from pilotrl_jax.models.config import LlamaConfig
from pilotrl_jax.rl import advantages as adv_lib
from pilotrl_jax.rl import losses as L
from pilotrl_jax.rl import masks as masks_lib
from pilotrl_jax.rl import metrics as M
from pilotrl_jax.rl.batching import batch_sharding, check_batch, constrain, micro_split
from pilotrl_jax.rl.optimizer import apply_update, lr_schedule, make_optimizer, update_count
from pilotrl_jax.rl.ppo_config import PPOConfig
from pilotrl_jax.rl.scoring import critic_values, init_critic_params, policy_logprobs_entropy  # noqa: F401
from pilotrl_jax.rl.train_state import TrainState, init_train_state, train_state_shardings  # noqa: F401
from pilotrl_jax.traces import CountingJit


def make_logprob_fn(model_cfg: LlamaConfig, cfg: PPOConfig, mesh=None, chunks: Optional[int] = None) -> CountingJit:
    """Jitted `logprob_fn(params, batch) -> [B, T]` token log-probs under cfg.temperature (for old and ref).

    Runs in `chunks` sequential pieces (default num_mini_batches*num_micro_batches) to bound memory."""
    n = chunks or cfg.num_mini_batches * cfg.num_micro_batches

    def fn(params, batch):
        B = batch["input_ids"].shape[0]
        if B % n:
            raise ValueError(f"batch size {B} is not divisible by {n} log-prob chunks")
        parts = {k: micro_split(batch[k], 1, n)[0] for k in ("input_ids", "attention_mask") if k in batch}
        if "positions" in batch:
            parts["positions"] = micro_split(batch["positions"], 1, n)[0]

        def one(p):
            p = constrain(p, mesh)
            return policy_logprobs_entropy(model_cfg, params, p["input_ids"], p.get("attention_mask"),
                                           p.get("positions"), cfg.temperature, cfg.logits_chunk_size)[0]

        out = jax.lax.map(one, parts)  # [n, mb, T]
        return jnp.moveaxis(out, 0, 1).reshape(B, -1)

    kw = {}
    if mesh is not None:
        kw = dict(out_shardings=batch_sharding(mesh))
    return CountingJit(fn, context=attention.mesh_context(model_cfg.attention_impl, mesh, model_cfg.dtype), **kw)


def make_value_fn(model_cfg: LlamaConfig, cfg: PPOConfig, mesh=None, chunks: Optional[int] = None) -> CountingJit:
    """Jitted `value_fn(critic_params, batch) -> [B, T]` critic values (see `critic_values`)."""
    n = chunks or cfg.num_mini_batches * cfg.num_micro_batches

    def fn(critic_params, batch):
        B = batch["input_ids"].shape[0]
        parts = {k: micro_split(batch[k], 1, n)[0] for k in ("input_ids", "attention_mask", "positions") if k in batch}

        def one(p):
            p = constrain(p, mesh)
            return critic_values(model_cfg, critic_params, p["input_ids"], p.get("attention_mask"), p.get("positions"))

        out = jax.lax.map(one, parts)
        return jnp.moveaxis(out, 0, 1).reshape(B, -1)

    kw = {}
    if mesh is not None:
        kw = dict(out_shardings=batch_sharding(mesh))
    return CountingJit(fn, context=attention.mesh_context(model_cfg.attention_impl, mesh, model_cfg.dtype), **kw)


def make_advantage_fn(cfg: PPOConfig) -> CountingJit:
    """Jitted `advantage_fn(batch) -> (advantages [B, T], returns [B, T] or None)` for cfg.advantage_estimator.

    Outcome estimators read batch['scores'] [B] and batch['group_ids'] [B]; GAE reads
    batch['token_rewards'] [B, T] (or places batch['scores'] on the last trained token) and batch['values'];
    batch['token_advantages'] [B, T], when given, is added on trained tokens (before whitening)."""

    def fn(batch):
        mask = batch["loss_mask"]
        name = cfg.advantage_estimator
        if name in adv_lib.OUTCOME_ESTIMATORS:
            scores = batch["scores"]
            if name == "grpo":
                adv = adv_lib.grpo(scores, mask, batch["group_ids"], None, cfg.grpo_eps, cfg.grpo_std)
            else:
                adv = adv_lib.get_advantage_fn(name)(scores, mask, batch["group_ids"])
            ret = None
        else:
            rewards = batch.get("token_rewards")
            if rewards is None:
                rewards = masks_lib.place_episode_rewards(batch["scores"], mask)
            adv, ret = adv_lib.gae(rewards, batch["values"], mask, cfg.gamma, cfg.lam)
        if "token_advantages" in batch:  # per-token credit (rl.turn_credit: GiGPO's step-level credit), added as is
            adv = adv + batch["token_advantages"] * mask
        if cfg.whiten_advantages:
            adv = adv_lib.whiten(adv, mask)
        return adv, ret

    return CountingJit(fn)


def ppo_loss(model_cfg: LlamaConfig, cfg: PPOConfig, both_params, micro: dict, dens: dict):
    """Total loss of one micro-batch and (policy loss, value loss, metric pairs); dens['policy'] is the
    mini-batch's aggregation denominator (`losses.agg_denominator`). Pure; differentiate w.r.t. both_params."""
    params, critic_params = both_params
    ids, attn, mask = micro["input_ids"], micro["attention_mask"], micro["loss_mask"].astype(jnp.float32)
    on = mask > 0
    adv = jnp.where(on, micro["advantages"], 0.0)
    old = jnp.where(on, micro["old_logprobs"], 0.0)
    lp, ent = policy_logprobs_entropy(model_cfg, params, ids, attn, micro.get("positions"), cfg.temperature,
                                      cfg.logits_chunk_size)
    lp_m = jnp.where(on, lp, 0.0)
    pg_loss, mets = L.ppo_policy_loss(lp_m, old, adv, mask, cfg.clip_eps_low, cfg.clip_eps_high,
                                      cfg.dual_clip, cfg.loss_agg_mode, dens["policy"])
    loss = pg_loss
    mets["entropy"] = M.masked_pair(jax.lax.stop_gradient(ent), mask)
    if cfg.entropy_coef:
        loss = loss - cfg.entropy_coef * L.aggregate(jnp.where(on, ent, 0.0), mask, cfg.loss_agg_mode, dens["policy"])
    if "ref_logprobs" in micro:
        ref = jnp.where(on, micro["ref_logprobs"], 0.0)
        kl = L.kl_estimate(lp_m, ref, cfg.kl_estimator)
        mets["kl_ref"] = M.masked_pair(jax.lax.stop_gradient(kl), mask)
        if cfg.kl_in_loss:
            loss = loss + cfg.kl_coef * L.aggregate(kl, mask, cfg.loss_agg_mode, dens["policy"])
    vloss = jnp.zeros((), jnp.float32)
    if cfg.use_critic:
        vals = critic_values(model_cfg, critic_params, ids, attn, micro.get("positions"))
        vals = jnp.where(on, vals, 0.0)
        ret = jnp.where(on, micro["returns"], 0.0)
        oldv = jnp.where(on, micro["old_values"], 0.0)
        vloss, vm = L.clipped_value_loss(vals, oldv, ret, mask, cfg.value_clip, cfg.loss_agg_mode, dens["policy"])
        mets.update(vm)
    return loss + vloss, (pg_loss, vloss, mets)


def make_ppo_step(model_cfg: LlamaConfig, cfg: PPOConfig, mesh=None, donate: bool = True) -> Callable:
    """A jitted pure `ppo_step(state, batch) -> (state, metrics)`; see the module doc for the batch.

    With `mesh`, state and batch shardings come from the rules table (in/out shardings fixed, so
    a run compiles once per batch shape). `donate` lets XLA reuse the input state's buffers.
    """
    tx = make_optimizer(cfg.lr, cfg)
    ctx = make_optimizer(cfg.critic_lr, cfg)
    n_mini, n_micro = cfg.num_mini_batches, cfg.num_micro_batches
    required = ("input_ids", "attention_mask", "loss_mask", "advantages", "old_logprobs")
    if cfg.kl_in_loss:
        required += ("ref_logprobs",)
    if cfg.use_critic:
        required += ("returns", "old_values")

    loss_fn = functools.partial(ppo_loss, model_cfg, cfg)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def mini_update(state_parts, mini):
        """One optimizer update on a mini-batch [n_micro, mb, T] (grads accumulated over micro-batches);
        skipped once the step has left its trust region (cfg.target_kl)."""
        params, opt_state, cparams, copt, stopped = state_parts
        flat_mask = mini["loss_mask"].reshape(-1, mini["loss_mask"].shape[-1])
        dens = {"policy": L.agg_denominator(flat_mask, cfg.loss_agg_mode)}

        def micro_body(carry, micro):
            gacc, pl, vl, macc = carry
            micro = constrain(micro, mesh)
            (_, (pg, vloss, mets)), grads = grad_fn((params, cparams), micro, dens)
            gacc = jax.tree.map(jnp.add, gacc, grads)
            return (gacc, pl + pg, vl + vloss, M.merge(macc, mets)), None

        first = jax.tree.map(lambda x: x[0], mini)
        met_shape = jax.eval_shape(lambda: loss_fn((params, cparams), first, dens)[1][2])
        zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), met_shape)
        zeros_g = jax.tree.map(jnp.zeros_like, (params, cparams))
        init = (zeros_g, jnp.zeros(()), jnp.zeros(()), zeros_m)
        (grads, pl, vl, mets), _ = jax.lax.scan(micro_body, init, mini)
        gp, gc = grads
        lr_now = lr_schedule(cfg.lr, cfg)(update_count(opt_state))  # the lr this update uses
        if cfg.target_kl is not None:  # the mini-batch's k3 to the old policy, before this update
            kl_sum, kl_n = mets["approx_kl_old"]
            stopped = stopped | (kl_sum > cfg.target_kl * jnp.maximum(kl_n, 1.0))
        params, opt_state, gnorm, ok = apply_update(tx, gp, opt_state, params, pl, ~stopped)
        mets = dict(mets)
        mets["kl_stopped"] = M.scalar_pair(stopped.astype(jnp.float32))
        mets["policy_loss"] = M.scalar_pair(pl)
        mets["grad_norm"] = M.scalar_pair(gnorm)
        mets["skipped_update"] = M.scalar_pair(1.0 - ok.astype(jnp.float32))
        mets["lr"] = M.scalar_pair(lr_now)
        if cfg.use_critic:
            cparams, copt, cgnorm, cok = apply_update(ctx, gc, copt, cparams, vl)
            mets["value_loss"] = M.scalar_pair(vl)
            mets["critic_grad_norm"] = M.scalar_pair(cgnorm)
            mets["critic_skipped_update"] = M.scalar_pair(1.0 - cok.astype(jnp.float32))
        return (params, opt_state, cparams, copt, stopped), mets

    def ppo_step(state: TrainState, batch: dict):
        B = batch["input_ids"].shape[0]
        batch = dict(batch)
        batch["loss_mask"] = batch["loss_mask"].astype(jnp.float32)
        sampler_lp = batch.pop("sampler_logprobs", None)
        rng, *ekeys = jax.random.split(state.rng, cfg.epochs + 1)

        def epoch_body(parts, key):
            perm = jax.random.permutation(key, B) if cfg.shuffle else jnp.arange(B)
            shuffled = jax.tree.map(lambda x: jnp.take(x, perm, axis=0), batch)
            minis = jax.tree.map(lambda x: micro_split(x, n_mini, n_micro), shuffled)
            return jax.lax.scan(mini_update, parts, minis)

        parts = (state.params, state.opt_state, state.critic_params, state.critic_opt_state, jnp.array(False))
        parts, mets = jax.lax.scan(epoch_body, parts, jnp.stack(ekeys))
        mets = jax.tree.map(lambda x: x.sum(axis=(0, 1)), mets)  # sum pairs over epochs and mini-batches
        mask = batch["loss_mask"]
        if sampler_lp is not None:
            on = mask > 0
            d = jnp.where(on, batch["old_logprobs"] - sampler_lp, 0.0)
            mets["sampler_abs_logprob_diff"] = M.masked_pair(jnp.abs(d), mask)
            mets["sampler_kl_k3"] = M.masked_pair(L.kl_estimate(jnp.where(on, sampler_lp, 0.0), jnp.where(on, batch["old_logprobs"], 0.0), "k3"), mask)
        mets["trained_tokens"] = M.pair(mask.sum(), 1.0)
        mets["advantage"] = M.masked_pair(jnp.where(mask > 0, batch["advantages"], 0.0), mask)
        params, opt_state, cparams, copt, _ = parts
        new_state = TrainState(params=params, opt_state=opt_state, critic_params=cparams,
                               critic_opt_state=copt, step=state.step + 1, rng=rng)
        return new_state, mets

    kw: dict = {"donate_argnums": (0,) if donate else ()}
    if mesh is not None:
        st = train_state_shardings(model_cfg, cfg, mesh)
        bs = batch_sharding(mesh)
        kw.update(in_shardings=(st, bs), out_shardings=(st, NamedSharding(mesh, P())))
    context = attention.mesh_context(model_cfg.attention_impl, mesh, model_cfg.dtype)
    jitted = CountingJit(ppo_step, context=context, **kw)

    def checked(state, batch):
        check_batch(batch, cfg, mesh, required)
        return jitted(state, batch)

    checked.num_traces = lambda: jitted.num_traces  # type: ignore[attr-defined]
    checked.jitted = jitted  # type: ignore[attr-defined]
    return checked


# ----------------------------------------------------------------------------- host orchestration


@dataclasses.dataclass
class PPOFunctions:
    """The jitted pieces of one PPO setup, and `prepare` to build a ppo batch from a rollout batch."""

    cfg: PPOConfig
    logprobs: CountingJit
    values: Optional[CountingJit]
    advantages: CountingJit
    step: Callable

    def prepare(self, state: TrainState, rollout: dict, ref_params=None) -> dict:
        """Rollout batch -> ppo batch: old (and ref) log-probs, values, KL-in-reward, advantages, returns.

        rollout: input_ids, attention_mask, loss_mask (or kind_ids + trained_kinds applied by the
        caller), sampler_logprobs (optional), and scores [B] + group_ids [B] (grpo/rloo) or
        scores [B] / token_rewards [B, T] (gae); token_advantages [B, T] (optional) is added to the advantages."""
        cfg = self.cfg
        ids_keys = ("input_ids", "attention_mask") + (("positions",) if "positions" in rollout else ())
        model_in = {k: rollout[k] for k in ids_keys}
        out = dict(model_in)
        out["loss_mask"] = jnp.asarray(rollout["loss_mask"], jnp.float32)
        if cfg.old_logprobs == "sampler":
            if "sampler_logprobs" not in rollout:
                raise ValueError("rl.old_logprobs='sampler' needs the rollout's sampler_logprobs; pass them or set "
                                 "rl.old_logprobs='recompute'")
            out["old_logprobs"] = jnp.asarray(rollout["sampler_logprobs"], jnp.float32)
        else:
            if "sampler_logprobs" in rollout:
                out["sampler_logprobs"] = rollout["sampler_logprobs"]
            out["old_logprobs"] = self.logprobs(state.params, model_in)
        adv_in = {"loss_mask": out["loss_mask"]}
        for k in ("scores", "group_ids", "token_rewards", "token_advantages"):
            if k in rollout:
                adv_in[k] = jnp.asarray(rollout[k])
        if cfg.needs_ref:
            if ref_params is None:
                raise ValueError("kl_coef > 0 needs ref_params (the frozen reference policy) in prepare()")
            out["ref_logprobs"] = self.logprobs(ref_params, model_in)
            if cfg.kl_in_reward:
                if cfg.advantage_estimator in adv_lib.OUTCOME_ESTIMATORS:
                    adv_in["scores"], _ = L.fold_kl_into_scores(adv_in["scores"], out["old_logprobs"], out["ref_logprobs"],
                                                                out["loss_mask"], cfg.kl_coef, cfg.kl_estimator)
                else:
                    r = adv_in.get("token_rewards")
                    if r is None:
                        r = masks_lib.place_episode_rewards(adv_in["scores"], out["loss_mask"])
                    adv_in["token_rewards"], _ = L.fold_kl_into_token_rewards(
                        r, out["old_logprobs"], out["ref_logprobs"], out["loss_mask"], cfg.kl_coef, cfg.kl_estimator)
        if cfg.use_critic:
            out["old_values"] = self.values(state.critic_params, model_in)
            adv_in["values"] = out["old_values"]
        adv, ret = self.advantages(adv_in)
        out["advantages"] = adv
        if cfg.use_critic:
            if ret is None:  # outcome advantages with a critic: regress values on the episode score
                ret = masks_lib.place_episode_rewards(adv_in["scores"], out["loss_mask"])
                ret = adv_lib.gae(ret, jnp.zeros_like(ret), out["loss_mask"], 1.0, 1.0)[1]
            out["returns"] = ret
        return out


def _step_key(cfg: PPOConfig) -> PPOConfig:
    """cfg with the fields ppo_step does not read set to fixed values (so equal keys share a compiled step)."""
    return dataclasses.replace(cfg, advantage_estimator="gae" if cfg.use_critic else "grpo", grpo_eps=1e-6,
                               grpo_std="unbiased", gamma=1.0, lam=1.0, whiten_advantages=False,
                               old_logprobs="recompute")


@functools.lru_cache(maxsize=32)
def _cached_step(model_cfg, key_cfg, mesh, donate):
    return make_ppo_step(model_cfg, key_cfg, mesh, donate)


@functools.lru_cache(maxsize=32)
def _cached_logprob_fn(model_cfg, temperature, logits_chunk_size, chunks, mesh):
    return make_logprob_fn(model_cfg, PPOConfig(temperature=temperature, logits_chunk_size=logits_chunk_size),
                           mesh, chunks)


@functools.lru_cache(maxsize=32)
def _cached_value_fn(model_cfg, chunks, mesh):
    return make_value_fn(model_cfg, PPOConfig(), mesh, chunks)


def build(model_cfg: LlamaConfig, cfg: PPOConfig, mesh=None, donate: bool = True) -> PPOFunctions:
    """All jitted PPO functions for one model/config/mesh (compiled functions are shared between
    configs that differ only in what a function does not read, e.g. grpo vs rloo share one step)."""
    chunks = cfg.num_mini_batches * cfg.num_micro_batches
    return PPOFunctions(
        cfg=cfg,
        logprobs=_cached_logprob_fn(model_cfg, cfg.temperature, cfg.logits_chunk_size, chunks, mesh),
        values=_cached_value_fn(model_cfg, chunks, mesh) if cfg.use_critic else None,
        advantages=make_advantage_fn(cfg),
        step=_cached_step(model_cfg, _step_key(cfg), mesh, donate),
    )
