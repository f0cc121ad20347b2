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

Metrics are exact (sum, count) pairs (`pilotrl_jax.rl.metrics`); `metrics.finalize` gives floats.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from pilotrl_jax.models import llama
from pilotrl_jax.models.config import LlamaConfig
from pilotrl_jax.rl import advantages as adv_lib
from pilotrl_jax.rl import losses as L
from pilotrl_jax.rl import masks as masks_lib
from pilotrl_jax.rl import metrics as M

LR_SCHEDULES = ("constant", "cosine", "linear")
OLD_LOGPROBS = ("recompute", "sampler")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO hyper-parameters; defaults are the paper's (GRPO, clip 0.2/0.2, dual-clip 3, no KL, lr 1e-6)."""

    # advantages
    advantage_estimator: str = "grpo"  # grpo | rloo | gae
    grpo_eps: float = 1e-6
    grpo_std: Optional[str] = "unbiased"  # torch.std as in verl; "biased"; None = Dr. GRPO (mean only; "none" in a config)
    gamma: float = 1.0
    lam: float = 1.0
    whiten_advantages: bool = False  # whiten over trained tokens of the batch (common with GAE)
    negative_advantage_scale: float = 1.0  # multiplies every negative token advantage (after any turn
    # credit, before whitening): 1 = plain PPO/GRPO, 0 = only better-than-group episodes are pushed
    # (self-imitation of the group's best), between = down-weighted negative gradients
    # policy loss
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    dual_clip: Optional[float] = 3.0
    loss_agg_mode: str = "token-mean"
    entropy_coef: float = 0.0
    temperature: float = 1.0  # the sampling temperature; log-probs are recomputed under it
    old_logprobs: str = "recompute"  # recompute: a trainer forward pass before the update; sampler: the
    # sampler's own log-probs of the sampled tokens (saves that pass; equal when sampler and trainer
    # run the same weights and numerics, which the ppo/sampler_* metrics of a "recompute" run check)
    logits_chunk_size: Optional[int] = None  # compute LM-head logits this many positions at a time
    # (rematerialised in backward) so [B, T, V] float32 logits never exist at once; None = all at once
    # KL to a frozen reference
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    kl_in_reward: bool = False  # True: fold coef*KL into rewards/scores instead of the loss
    # optimisation
    lr: float = 1e-6
    lr_schedule: str = "constant"
    warmup_steps: int = 0  # in optimizer updates
    total_steps: int = 0  # optimizer updates, for cosine/linear decay
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: Optional[float] = 1.0
    frozen_params: str = ""  # comma-separated top-level param names the RL updates leave as they are, e.g.
    # "embed,lm_head" (their gradients are not clipped with the rest nor decayed); "" = train everything
    target_kl: Optional[float] = None  # a trust region on the whole step: once a mini-batch's mean k3 to the
    # old policy (measured before its update) exceeds this, that update and the rest of the step's are
    # skipped (as in Stable-Baselines3's PPO); None = off
    # batching (paper: 256 tasks per step, mini-batch 64 tasks -> 4 mini-batches)
    epochs: int = 1
    num_mini_batches: int = 4
    num_micro_batches: int = 1
    shuffle: bool = True
    # critic (ours; off in the paper)
    use_critic: bool = False
    critic_lr: float = 1e-5
    value_clip: Optional[float] = 0.2

    def __post_init__(self):
        if self.advantage_estimator not in adv_lib.ADVANTAGES:
            raise ValueError(
                f"advantage_estimator={self.advantage_estimator!r}; expected one of {sorted(adv_lib.ADVANTAGES)}"
            )
        if self.advantage_estimator == "gae" and not self.use_critic:
            raise ValueError("advantage_estimator='gae' needs a critic; set use_critic=True (or use grpo/rloo)")
        if self.grpo_std not in ("unbiased", "biased", None):
            raise ValueError(f"grpo_std={self.grpo_std!r}; expected 'unbiased', 'biased' or None (Dr. GRPO; "
                             "'none' in a config)")
        if self.loss_agg_mode not in L.AGG_MODES:
            raise ValueError(f"loss_agg_mode={self.loss_agg_mode!r}; expected one of {L.AGG_MODES}")
        if self.kl_estimator not in L.KL_ESTIMATORS:
            raise ValueError(f"kl_estimator={self.kl_estimator!r}; expected one of {sorted(L.KL_ESTIMATORS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={self.lr_schedule!r}; expected one of {LR_SCHEDULES}")
        if self.lr_schedule != "constant" and self.total_steps <= self.warmup_steps:
            raise ValueError(
                f"lr_schedule={self.lr_schedule!r} needs total_steps > warmup_steps (got {self.total_steps}, "
                f"{self.warmup_steps}); set total_steps to the number of optimizer updates"
            )
        for name in ("epochs", "num_mini_batches", "num_micro_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; expected >= 1")
        if self.logits_chunk_size is not None and self.logits_chunk_size < 1:
            raise ValueError(f"logits_chunk_size={self.logits_chunk_size}; expected a positive int or None")
        if self.target_kl is not None and not self.target_kl > 0:
            raise ValueError(f"target_kl={self.target_kl}; expected a positive float or None (off)")
        if not 0.0 <= self.negative_advantage_scale <= 1.0:
            raise ValueError(f"negative_advantage_scale={self.negative_advantage_scale}; expected a value in [0, 1] "
                             "(1 = plain PPO, 0 = positive advantages only)")
        if self.old_logprobs not in OLD_LOGPROBS:
            raise ValueError(f"old_logprobs={self.old_logprobs!r}; expected one of {OLD_LOGPROBS}")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}; expected > 0 (the sampling temperature)")

    @property
    def kl_in_loss(self) -> bool:
        """Whether a KL term to the reference is added to the policy loss."""
        return self.kl_coef > 0 and not self.kl_in_reward

    @property
    def needs_ref(self) -> bool:
        """Whether reference log-probs are needed at all."""
        return self.kl_coef > 0


@flax.struct.dataclass
class TrainState:
    """Everything the PPO step updates: policy (+ optional critic) params, optimizer states, step, rng."""

    params: Any
    opt_state: Any
    critic_params: Any
    critic_opt_state: Any
    step: jax.Array  # number of ppo_step calls (optax states count optimizer updates)
    rng: jax.Array


# ----------------------------------------------------------------------------- optimizers


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


def frozen_names(cfg: PPOConfig) -> tuple:
    """The top-level param names `cfg.frozen_params` lists."""
    return tuple(n.strip() for n in str(cfg.frozen_params or "").split(",") if n.strip())


def make_optimizer(lr: float, cfg: PPOConfig) -> optax.GradientTransformation:
    """AdamW with the schedule and global-norm clipping; no weight decay on 1-D params (norms, biases);
    the top-level params named in `cfg.frozen_params` get zero updates."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    adamw = optax.adamw(lr_schedule(lr, cfg), cfg.adam_b1, cfg.adam_b2, cfg.adam_eps,
                        weight_decay=cfg.weight_decay, mask=decay_mask)
    tx = adamw if cfg.max_grad_norm is None else optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw)
    frozen = frozen_names(cfg)
    if not frozen:
        return tx

    def labels(params):
        missing = [n for n in frozen if n not in params]
        if missing:
            raise ValueError(f"rl.frozen_params names {missing}, which the model does not have; "
                             f"top-level params are {sorted(params)}")
        return {k: jax.tree.map(lambda _: "frozen" if k in frozen else "train", v) for k, v in params.items()}

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


# ----------------------------------------------------------------------------- policy log-probs


def _lm_head(model_cfg: LlamaConfig, params):
    """The LM-head matrix [D, V] (the embedding, transposed, when tied)."""
    return params["embed"].T if model_cfg.tie_word_embeddings else params["lm_head"]


def policy_logprobs_entropy(model_cfg: LlamaConfig, params, input_ids, attention_mask=None, positions=None,
                            temperature: float = 1.0, chunk_size: Optional[int] = None):
    """(token log-probs [B, T], entropies [B, T]) of the policy, aligned like `losses.token_logprobs`.

    chunk_size None: from the full logits. Otherwise the LM head runs on `chunk_size` positions at a
    time under `jax.checkpoint`, so neither forward nor backward holds [B, T, V] float32 logits."""
    if chunk_size is None:
        logits = llama.forward(model_cfg, params, input_ids, attention_mask, positions)
        return L.token_logprobs_and_entropy(logits, input_ids, temperature)
    ids = jnp.asarray(input_ids, jnp.int32)
    h = llama.forward_hidden(model_cfg, params, ids, attention_mask, positions)[:, :-1]
    tgt = ids[:, 1:]
    B, n, D = h.shape
    nc = -(-n // chunk_size)
    pad = nc * chunk_size - n
    h = jnp.pad(h, ((0, 0), (0, pad), (0, 0))).reshape(B, nc, chunk_size, D).swapaxes(0, 1)
    tgt = jnp.pad(tgt, ((0, 0), (0, pad))).reshape(B, nc, chunk_size).swapaxes(0, 1)
    w = _lm_head(model_cfg, params).astype(h.dtype)

    @jax.checkpoint
    def one(hc, tc):
        z = (hc @ w).astype(jnp.float32) / temperature
        lse = jax.nn.logsumexp(z, axis=-1)
        lp = jnp.take_along_axis(z, tc[..., None], axis=-1)[..., 0] - lse
        ent = lse - (jnp.exp(z - lse[..., None]) * z).sum(-1)
        return lp, ent

    lp, ent = jax.lax.map(lambda a: one(*a), (h, tgt))  # [nc, B, chunk]
    fix = lambda x: jnp.pad(x.swapaxes(0, 1).reshape(B, -1)[:, :n], ((0, 0), (1, 0)))
    return fix(lp), fix(ent)


# ----------------------------------------------------------------------------- critic


def init_critic_params(policy_params, rng: Optional[jax.Array] = None):
    """Critic = the policy's backbone (copied, LM head dropped) + a zero-initialised scalar head."""
    backbone = {k: v for k, v in policy_params.items() if k != "lm_head"}
    backbone = jax.tree.map(jnp.array, backbone)  # a copy, so donation of either tree is safe
    d = backbone["embed"].shape[-1]
    return {"backbone": backbone, "head": {"kernel": jnp.zeros((d,), jnp.float32), "bias": jnp.zeros((), jnp.float32)}}


def critic_values(model_cfg: LlamaConfig, critic_params, input_ids, attention_mask=None, positions=None):
    """Values [B, T] aligned like log-probs: entry t is V(state before token t), from hidden[t-1]; entry 0 is 0."""
    h = llama.forward_hidden(model_cfg, critic_params["backbone"], input_ids, attention_mask, positions)
    v = h.astype(jnp.float32) @ critic_params["head"]["kernel"] + critic_params["head"]["bias"]
    return jnp.pad(v[:, :-1], ((0, 0), (1, 0)))


# ----------------------------------------------------------------------------- state + shardings


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


def batch_sharding(mesh) -> NamedSharding:
    """Sharding of every [B, T] batch array: batch over the rules' 'batch' axes, length replicated."""
    from pilotrl_jax import sharding as sh

    return NamedSharding(mesh, sh.logical_to_spec(("batch", "length")))


def _check_batch(batch: dict, cfg: PPOConfig, mesh, required: tuple) -> int:
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


# ----------------------------------------------------------------------------- helpers inside jit


def _micro_split(x, n_outer: int, n_inner: int):
    """[B, ...] -> [n_outer, n_inner, B/(n_outer*n_inner), ...] keeping the per-chunk rows strided,
    so that a batch sharded on its leading axis stays sharded on the chunk's row axis."""
    mb = x.shape[0] // (n_outer * n_inner)
    y = x.reshape((mb, n_outer, n_inner) + x.shape[1:])
    return jnp.moveaxis(y, 0, 2)


def _constrain(tree, mesh):
    """Shard the leading axis of every leaf over the batch axes (no-op without a mesh)."""
    if mesh is None:
        return tree
    s = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, s), tree)


def _tree_all_finite(tree):
    """Scalar bool: every leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


def _apply_update(tx, grads, opt_state, params, loss, allow=True):
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


# ----------------------------------------------------------------------------- jitted functions


class CountingJit:
    """A jitted function that counts how many times it was traced (== compiled, per input signature)."""

    def __init__(self, fn: Callable, **jit_kwargs):
        self.num_traces = 0

        @functools.wraps(fn)
        def counted(*args):
            self.num_traces += 1
            return fn(*args)

        self._jitted = jax.jit(counted, **jit_kwargs)

    def __call__(self, *args):
        """Run the jitted function."""
        return self._jitted(*args)

    def lower(self, *args):
        """Lower for inspection (HLO, cost analysis)."""
        return self._jitted.lower(*args)


def make_logprob_fn(model_cfg: LlamaConfig, cfg: PPOConfig, mesh=None, chunks: Optional[int] = None) -> CountingJit:
    """Jitted `logprob_fn(params, batch) -> [B, T]` token log-probs under cfg.temperature (for old and ref).

    Runs in `chunks` sequential pieces (default num_mini_batches*num_micro_batches) to bound memory."""
    n = chunks or cfg.num_mini_batches * cfg.num_micro_batches

    def fn(params, batch):
        B = batch["input_ids"].shape[0]
        if B % n:
            raise ValueError(f"batch size {B} is not divisible by {n} log-prob chunks")
        parts = {k: _micro_split(batch[k], 1, n)[0] for k in ("input_ids", "attention_mask") if k in batch}
        if "positions" in batch:
            parts["positions"] = _micro_split(batch["positions"], 1, n)[0]

        def one(p):
            p = _constrain(p, mesh)
            return policy_logprobs_entropy(model_cfg, params, p["input_ids"], p.get("attention_mask"),
                                           p.get("positions"), cfg.temperature, cfg.logits_chunk_size)[0]

        out = jax.lax.map(one, parts)  # [n, mb, T]
        return jnp.moveaxis(out, 0, 1).reshape(B, -1)

    kw = {}
    if mesh is not None:
        kw = dict(out_shardings=batch_sharding(mesh))
    return CountingJit(fn, **kw)


def make_value_fn(model_cfg: LlamaConfig, cfg: PPOConfig, mesh=None, chunks: Optional[int] = None) -> CountingJit:
    """Jitted `value_fn(critic_params, batch) -> [B, T]` critic values (see `critic_values`)."""
    n = chunks or cfg.num_mini_batches * cfg.num_micro_batches

    def fn(critic_params, batch):
        B = batch["input_ids"].shape[0]
        parts = {k: _micro_split(batch[k], 1, n)[0] for k in ("input_ids", "attention_mask", "positions") if k in batch}

        def one(p):
            p = _constrain(p, mesh)
            return critic_values(model_cfg, critic_params, p["input_ids"], p.get("attention_mask"), p.get("positions"))

        out = jax.lax.map(one, parts)
        return jnp.moveaxis(out, 0, 1).reshape(B, -1)

    kw = {}
    if mesh is not None:
        kw = dict(out_shardings=batch_sharding(mesh))
    return CountingJit(fn, **kw)


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
        if "token_advantages" in batch:  # turn-level credit (e.g. a wasted turn's own tokens), added as is
            adv = adv + batch["token_advantages"] * mask
        if cfg.negative_advantage_scale != 1.0:
            adv = jnp.where(adv < 0, adv * cfg.negative_advantage_scale, adv)
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
            micro = _constrain(micro, mesh)
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
        lr_now = lr_schedule(cfg.lr, cfg)(_update_count(opt_state))  # the lr this update uses
        if cfg.target_kl is not None:  # the mini-batch's k3 to the old policy, before this update
            kl_sum, kl_n = mets["approx_kl_old"]
            stopped = stopped | (kl_sum > cfg.target_kl * jnp.maximum(kl_n, 1.0))
        params, opt_state, gnorm, ok = _apply_update(tx, gp, opt_state, params, pl, ~stopped)
        mets = dict(mets)
        mets["kl_stopped"] = M.scalar_pair(stopped.astype(jnp.float32))
        mets["policy_loss"] = M.scalar_pair(pl)
        mets["grad_norm"] = M.scalar_pair(gnorm)
        mets["skipped_update"] = M.scalar_pair(1.0 - ok.astype(jnp.float32))
        mets["lr"] = M.scalar_pair(lr_now)
        if cfg.use_critic:
            cparams, copt, cgnorm, cok = _apply_update(ctx, gc, copt, cparams, vl)
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
            minis = jax.tree.map(lambda x: _micro_split(x, n_mini, n_micro), shuffled)
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
    jitted = CountingJit(ppo_step, **kw)

    def checked(state, batch):
        _check_batch(batch, cfg, mesh, required)
        return jitted(state, batch)

    checked.num_traces = lambda: jitted.num_traces  # type: ignore[attr-defined]
    checked.jitted = jitted  # type: ignore[attr-defined]
    return checked


def _update_count(opt_state) -> jax.Array:
    """Number of optimizer updates so far, read from the Adam state inside `opt_state`."""
    for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)):
        if isinstance(s, optax.ScaleByAdamState):
            return s.count
    return jnp.zeros((), jnp.int32)


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
