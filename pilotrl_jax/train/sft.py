"""SFT warm start on expert AdaPlan (and ReAct) demonstrations, for models that never saw the format.

Demonstrations are real rollouts whose policy text is the environment expert's (a `ForcedPolicy`),
so they carry exactly the token layout RL will use. The loss is next-token cross-entropy on the
trained span kinds only.

Several hosts: every host collects the same (deterministic, model-free) demonstrations, process 0
writes the cache, and each step's batch is placed over the mesh from the rows every host holds.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pilotrl_jax import distributed as dist
from pilotrl_jax.models import attention, llama
from pilotrl_jax.rl import masks as masks_lib
from pilotrl_jax.rl.optimizer import make_optimizer
from pilotrl_jax.rl.ppo_config import PPOConfig
from pilotrl_jax.rollout import ForcedPolicy, RolloutRunner, expert_turn
from pilotrl_jax.rollout.batch import bucket_length
from pilotrl_jax.train.config import _split
from pilotrl_jax.train.stopping import agreed_stop


def sft_loss(model_cfg, params, batch: dict):
    """Mean next-token NLL over `loss_mask` tokens (entry t of the mask is about token t)."""
    logits = llama.forward(model_cfg, params, batch["input_ids"], batch["attention_mask"])
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    tgt = batch["input_ids"][:, 1:]
    nll = -jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
    m = batch["loss_mask"][:, 1:]
    return (nll * m).sum() / jnp.maximum(m.sum(), 1.0)


def sft_length(attention_mask: np.ndarray, bucket: int) -> int:
    """Columns a batch of right-padded rows needs: its longest row rounded up to a multiple of
    `bucket` (0 = keep the full width), so short batches do not pay for the longest demo."""
    width = int(attention_mask.shape[1])
    if int(bucket) <= 0:
        return width
    return min(width, bucket_length(int(attention_mask.sum(axis=1).max()), int(bucket)))


def sft_optimizer(lr: float, sft_cfg) -> optax.GradientTransformation:
    """The RL optimizer (`rl.optimizer.make_optimizer`: AdamW, global-norm clipping, no decay on 1-D params)
    with the SFT section's warmup, weight decay and clipping, at a constant lr after warmup."""
    return make_optimizer(lr, PPOConfig(lr=lr, warmup_steps=int(sft_cfg.warmup_steps),
                                        weight_decay=float(sft_cfg.weight_decay),
                                        max_grad_norm=float(sft_cfg.max_grad_norm) or None))


def make_sft_step(model_cfg, tx, out_shardings=None, mesh=None):
    """Jitted (params, opt_state, batch) -> (params, opt_state, loss); `out_shardings` pins the
    (params, opt_state, loss) layout (multi-host: the state stays sharded as it came); with `mesh`, it
    traces under the attention kernel's mesh context (`models.attention.mesh_context`: splash in shard_map)."""

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda p: sft_loss(model_cfg, p, batch))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    jitted = jax.jit(step) if out_shardings is None else jax.jit(step, out_shardings=out_shardings)
    enter = attention.mesh_context(model_cfg.attention_impl, mesh, model_cfg.dtype)

    def run(params, opt_state, batch):
        with enter():
            return jitted(params, opt_state, batch)

    return run


def opt_state_shardings(tx, params, mesh):
    """NamedShardings of `tx.init(params)`: moments like their params, counters replicated."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    rep = NamedSharding(mesh, P())
    shards = jax.tree.map(lambda x: x.sharding, params)
    return optax.tree_utils.tree_map_params(tx, lambda _, s: s, jax.eval_shape(tx.init, params), shards,
                                            transform_non_params=lambda _: rep,
                                            is_leaf=lambda x: isinstance(x, NamedSharding))


# Demonstration episodes held at once. Every live ALFWorld env holds an engine and a planner, and each
# loads its own 33 MB copy of fast-downward's library, kept for the life of the process (see
# envs/alfworld_env._ENGINES): 1024 demonstrations at once were ~67 GB of disk. The expert's episodes
# are host-only and the in-process engine runs one call at a time, so capping them costs nothing.
DEMO_LIVE_EPISODES = 64


def collect_demos(ctx, tasks, mode: str, replan, seed: int) -> Any:
    """Expert-driven rollouts (RolloutBatch) on `tasks` in `mode`."""
    from pilotrl_jax.train.evaluation import rollout_config

    rc = rollout_config(ctx, group_size=1, mode=mode, replan=replan, temperature=1.0, top_p=1.0, seed=seed)
    rc = dataclasses.replace(rc, max_live=DEMO_LIVE_EPISODES)
    thought = str(ctx.cfg.agent.get("thought_style", "full"))
    policy = ForcedPolicy(functools.partial(expert_turn, thought=thought), max_len=int(ctx.cfg.agent.token_budget))
    return RolloutRunner(policy, ctx.env_factory, ctx.tokenizer, rc).run(list(tasks))


def demo_arrays(ctx, st, stage_dir: str) -> dict:
    """Demonstration arrays (cached in the stage dir, so a resumed SFT sees the same data)."""
    path = os.path.join(stage_dir, "demos.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            return dict(z)
    modes = _split(ctx.cfg.stages[st.name].mode or ctx.cfg.agent.mode)
    parts = []
    for i, mode in enumerate(modes):
        replan = st.replan or ctx.cfg.agent.replan
        batch = collect_demos(ctx, ctx.train_tasks, mode, replan, ctx.cfg.seed + i)
        batch.episodes = [e for e in batch.episodes if e.won]  # only successful demonstrations
        parts.append(batch)
    if not any(b.episodes for b in parts):
        raise RuntimeError(f"the expert won none of the {len(ctx.train_tasks)} training tasks within "
                           f"config.agent.max_turns={ctx.cfg.agent.max_turns} turns and config.agent.token_budget="
                           f"{ctx.cfg.agent.token_budget} tokens, so there are no demonstrations for SFT; raise "
                           "them or config.env.num_train_tasks")
    T = max(max(e.length for e in b.episodes) for b in parts if b.episodes)
    T = int(-(-T // 64) * 64)
    arrs = [b.to_arrays(pad_to=T) for b in parts if b.episodes]
    ids = np.concatenate([a["input_ids"] for a in arrs])
    kinds = np.concatenate([a["kind_ids"] for a in arrs])
    out = {"input_ids": ids, "kind_ids": kinds, "attention_mask": (kinds != 0).astype(np.int32)}
    if dist.is_coordinator():  # every host computed the same arrays; one writes them
        os.makedirs(stage_dir, exist_ok=True)
        np.savez(path + ".tmp.npz", **out)
        os.replace(path + ".tmp.npz", path)  # a killed run never leaves a torn cache
    return out


def run_sft_stage(ctx, st, params, stage_dir: str, ck, metrics, stop_flag) -> Any:
    """Train `st.steps` SFT steps from `params` (resuming from `ck`); returns the final params."""
    cfg = ctx.cfg
    data = demo_arrays(ctx, st, stage_dir)
    n = data["input_ids"].shape[0]
    if n == 0:
        raise RuntimeError("the expert solved no training task, so there are no demonstrations for SFT")
    loss_mask = np.asarray(masks_lib.loss_mask(data["kind_ids"], st.trained_spans))
    tx = sft_optimizer(st.ppo.lr, cfg.sft)
    multi = jax.process_count() > 1
    out_shardings = None
    if multi:  # global arrays: the optimizer state is built (and kept) sharded like the params
        from jax.sharding import NamedSharding, PartitionSpec as P

        o_sh = opt_state_shardings(tx, params, ctx.mesh)
        opt_state = jax.jit(tx.init, out_shardings=o_sh)(params)
        out_shardings = (jax.tree.map(lambda x: x.sharding, params), o_sh, NamedSharding(ctx.mesh, P()))
    else:
        opt_state = tx.init(params)
    start = 0
    got = ck.restore_latest(params, {"opt_state": opt_state})
    if got is not None:
        start, params, rest, _ = got
        opt_state = rest["opt_state"]
        dist.log0(f"[{st.name}] resumed from step {start}")
    metrics.truncate_after(start)
    step_fn = make_sft_step(ctx.model_cfg, tx, out_shardings, ctx.mesh)
    bs = min(int(cfg.sft.batch_size), n)
    from tqdm.auto import tqdm

    bar = tqdm(range(start, st.steps), desc=st.name, unit="step", initial=start, total=st.steps,
               disable=not dist.is_coordinator())
    for step in bar:
        t0 = time.perf_counter()
        rng = np.random.default_rng([int(cfg.seed), step])
        idx = rng.choice(n, size=bs, replace=False)
        T = sft_length(data["attention_mask"][idx], int(cfg.sft.length_bucket))
        rows = {"input_ids": data["input_ids"][idx, :T], "attention_mask": data["attention_mask"][idx, :T],
                "loss_mask": loss_mask[idx, :T]}
        if multi:  # every host holds the whole batch; each places its devices' rows
            batch = dist.global_from_full(rows, ctx.mesh)
        else:
            batch = {k: jnp.asarray(v) for k, v in rows.items()}
        params, opt_state, loss = step_fn(params, opt_state, batch)
        loss = float(dist.to_host(loss))
        bar.set_postfix(loss=f"{loss:.3f}")
        metrics.write(step + 1, {"sft/loss": loss, "sft/demos": n, "time/step_s": time.perf_counter() - t0})
        stopping = agreed_stop(stop_flag)
        if (step + 1) % int(cfg.checkpoint.every) == 0 or step + 1 == st.steps or stopping:
            ck.save(step + 1, params, {"opt_state": opt_state}, {"stage": st.name, "data_pos": step + 1})
        if stopping:
            break
    return params
