"""The PilotRL trainer: a pipeline of stages (SFT warm start, stage 1 → 2 → 3), each starting from
the previous stage's final checkpoint.

An RL step: rollouts (N tasks × G episodes, AdaPlan/ReAct) → rewards (outcome, format, overlong,
plan score from a judge) → advantages → `ppo_step` → metrics → checkpoint; evaluation on held-out
tasks every `eval.every` steps and at the end of the stage (of the stages `eval.stages` names; all by default).

Layout under WORKDIR:
    tokenizer/, base/, games/          shared by every stage (built once)
    <stage>/metrics.jsonl, <stage>/tb/ metrics
    <stage>/checkpoints/<step>/        resumable state; <stage>/checkpoints/final|best/ params
    <stage>/eval.json, <stage>/DONE    the stage's final evaluation; DONE once it finished
    curves.png                         all stages' curves
Rerunning the same command with the same WORKDIR resumes: finished stages are skipped and an
interrupted stage continues from its latest readable checkpoint (same seeds → same result).
SIGTERM (e.g. TPU preemption) saves at the end of the current step and exits.

Several hosts (a TPU pod; `pilotrl_jax.train.multihost`): every host runs this same code, rolls out
only its share of each step's tasks (whole GRPO groups) with a host-local sampler, builds its rows of
the training batch, and the global batch is assembled over the mesh; rollout metrics are reduced over
hosts, evaluation is split over hosts and gathered. Only process 0 writes run-level files (metrics,
eval.json, init.json, config.json, curves) and prints; Orbax checkpoints are written by every host.
A SIGTERM seen by any host stops all of them at the same step.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

import jax
import numpy as np

from pilotrl_jax import distributed as dist
from pilotrl_jax.rl import masks as masks_lib
from pilotrl_jax.rl import metrics as M
from pilotrl_jax.rl import ppo
from pilotrl_jax.rl.turn_credit import turn_credit
from pilotrl_jax.rollout import CheckpointPlans, EndpointPlans, ExpertPlans, RolloutRunner, SamplerPolicy
from pilotrl_jax.train import config as C
from pilotrl_jax.train import memory_plan
from pilotrl_jax.train import multihost
from pilotrl_jax.train import setup as S
from pilotrl_jax.train.checkpoints import Checkpointer
from pilotrl_jax.train.evaluation import evaluate, make_engine, rollout_config
from pilotrl_jax.train.metrics import MetricsWriter, plot_curves
from pilotrl_jax.train.sft import run_sft_stage
from pilotrl_jax.train.stopping import Preempted, StopFlag, agreed_stop


def step_tasks(tasks: list, per_step: int, step: int, seed: int) -> list:
    """The tasks of training step `step`: consecutive slices of a per-epoch seeded shuffle."""
    n = len(tasks)
    out = []
    for k in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(k, n)
        order = np.random.default_rng([int(seed), epoch]).permutation(n)
        out.append(tasks[int(order[pos])])
    return out


def rollout_seed(seed: int, stage_index: int, step: int, offset: int = 0) -> int:
    """The rollout seed of a step (sampler seeds per episode derive from it); `offset` > 0
    (`rollout.rl_seed_offset`) re-draws it, 0 keeps the seeds of runs made before the option existed."""
    entropy = [int(seed), 1000 + stage_index, int(step)] + ([int(offset)] if offset else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def ppo_rng(seed: int, stage_index: int, offset: int = 0) -> jax.Array:
    """The PRNG key of a stage's TrainState (PPO's mini-batch order); `offset` > 0 re-draws it."""
    key = jax.random.PRNGKey(int(seed) + stage_index)
    return jax.random.fold_in(key, int(offset)) if offset else key


def _rest_of(state: ppo.TrainState) -> dict:
    """The TrainState without policy params (saved as a separate checkpoint item); no None leaves."""
    d = {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}
    if state.critic_params is not None:
        d["critic_params"] = state.critic_params
        d["critic_opt_state"] = state.critic_opt_state
    return d


def make_planner(ctx, st: C.StageSettings):
    """The stage-1 plan source (None when the policy writes its own plans)."""
    if st.plan_source == "policy":
        return None
    if st.plan_source == "expert":
        return ExpertPlans()
    if st.plan_source == "http":
        from pilotrl_jax.rewards.openai_client import ClientConfig, OpenAIClient

        j = ctx.cfg.judge
        client = OpenAIClient(ClientConfig(base_url=st.plan_source_path, model=j.model or "planner",
                                           api_key_env=j.api_key_env or None, timeout_s=float(j.timeout),
                                           max_retries=int(j.max_retries), backoff_s=float(j.backoff)))

        def complete(messages):
            res = client.chat(messages)
            if not res.ok:
                raise RuntimeError(res.error)
            return res.content

        return EndpointPlans(complete, max_workers=int(j.concurrency))
    # a frozen checkpoint (ours) writes the plans
    params = S.load_params_any(st.plan_source_path, False, ctx.model_cfg, ctx.mesh)
    engine = make_engine(ctx, params, rows=16, seed=ctx.cfg.seed)
    return CheckpointPlans(engine, ctx.tokenizer, max_new_tokens=int(ctx.cfg.agent.max_plan_tokens))


def make_judge(ctx, st: C.StageSettings, params):
    """The plan-quality judge of a stage (None when the reward has no plan term)."""
    if st.reward.plan_weight <= 0:
        return None
    from pilotrl_jax.rewards import make_judge as mk

    j = ctx.cfg.judge
    if st.judge == "grounded":
        return mk("grounded")
    if st.judge == "http":
        return mk("http", base_url=j.base_url, model=j.model, api_key_env=j.api_key_env or None,
                  timeout_s=float(j.timeout), max_concurrency=int(j.concurrency), max_units=int(j.max_units),
                  max_retries=int(j.max_retries), backoff_s=float(j.backoff), deadline_s=float(j.deadline) or None)
    judge_params = S.load_params_any(j.checkpoint, False, ctx.model_cfg, ctx.mesh) if j.checkpoint else params
    judge_params = multihost.sampler_params(ctx, judge_params)  # each host judges its own episodes
    return mk("local", config=ctx.model_cfg, params=judge_params, tokenizer=ctx.tokenizer, max_units=int(j.max_units))


def episode_summary(e, judgement):
    """The reward's view of a finished episode (an episode whose env never started scores 0)."""
    from pilotrl_jax.rewards import EpisodeSummary, summarize_episode

    if e.agent is None:
        return EpisodeSummary(won=False, score=0.0, format_errors=int(e.format_errors), response_len=0)
    return summarize_episode(e.agent, judgement)


def check_rollout(episodes, stage: str, step: int) -> None:
    """Raise when every episode of a training step failed in its environment (e.g. a full disk):
    such a batch has no signal, and training on would silently waste the rest of the stage."""
    if episodes and all(e.status == "env_error" for e in episodes):
        raise RuntimeError(f"[{stage}] step {step + 1}: all {len(episodes)} episodes failed in their environment "
                           f"(first: {episodes[0].error}); fix the environment (disk space, engine install) and "
                           "rerun the same command to resume from the last checkpoint")


def rollout_metrics(batch, rewards) -> dict:
    """Flat metrics of one rollout batch and its rewards."""
    s = batch.summary()
    eps = batch.episodes
    out = {
        "success/train": s["success_rate"],
        "score/train": s["mean_score"],
        "length/mean": float(np.mean([e.length for e in eps])),
        "length/policy_tokens": float(np.mean([e.policy_tokens for e in eps])),
        "turns/mean": float(np.mean([e.num_turns for e in eps])),
        "format_errors/mean": float(np.mean([e.format_errors for e in eps])),
    }
    for k, v in s.get("statuses", {}).items():
        out[f"status/{k}"] = v
    st = batch.stats or {}
    for k in ("wall_s", "generate_s", "model_busy", "episodes_per_s", "policy_tokens"):
        if k in st:
            out[f"rollout/{k}"] = st[k]
    out.update(rewards.metrics)
    return out


def training_batch(arr: dict, trained_spans, rewards: np.ndarray, token_advantages: Optional[np.ndarray] = None,
                   valid: Optional[np.ndarray] = None) -> dict:
    """The PPO input of a rollout: token arrays, the stage's loss mask (from span kinds), scores, and
    optional per-token advantage terms [B, T].

    Rows with `valid` False (episodes cut short by an environment failure: their outcome says nothing
    about the policy) get no trained tokens and group id -1, so they neither train nor enter their
    group's GRPO mean and std."""
    loss_mask = np.asarray(masks_lib.loss_mask(arr["kind_ids"], trained_spans))
    group_ids = np.asarray(arr["group_ids"])
    if valid is not None:
        valid = np.asarray(valid, bool)
        loss_mask = np.where(valid[:, None], loss_mask, 0).astype(loss_mask.dtype)
        group_ids = np.where(valid, group_ids, -1).astype(group_ids.dtype)
    out = {
        "input_ids": arr["input_ids"], "attention_mask": arr["attention_mask"], "loss_mask": loss_mask,
        "sampler_logprobs": arr["sampler_logprobs"], "scores": np.asarray(rewards, np.float32),
        "group_ids": group_ids,
    }
    if token_advantages is not None:
        out["token_advantages"] = np.asarray(token_advantages, np.float32)
    return out


def seq_bucket(cfg):
    """How a PPO batch's length is padded: 'pow2' (config.rollout.pad_multiple 0) or a multiple of k."""
    k = int(cfg.rollout.get("pad_multiple", 0))
    return "pow2" if k == 0 else k


def params_checksum(params) -> float:
    """Sum of |params| in float64: a cheap fingerprint to check which params a stage started from.

    On several hosts every process must call it (leaves are gathered one at a time)."""
    if multihost.is_multihost():
        return float(sum(np.abs(np.asarray(dist.to_host(x), np.float64)).sum() for x in jax.tree.leaves(params)))
    return float(sum(np.abs(np.asarray(jax.device_get(x), np.float64)).sum() for x in jax.tree.leaves(params)))


def host_rollout_metrics(row: dict, batch, rewards) -> dict:
    """`row` (this host's rollout metrics) reduced over every host's; the identity on one host."""
    if not multihost.is_multihost():
        return row
    plan_ok = int(np.asarray(rewards.components.get("plan_ok", np.zeros(0))).sum())
    plain = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
    got = dist.allgather_json({"row": {k: v for k, v in plain.items() if isinstance(v, (int, float, str, type(None)))},
                               "n": len(batch.episodes), "plan_ok": plan_ok})
    return multihost.reduce_metrics([g["row"] for g in got], [g["n"] for g in got],
                                    [{"reward/plan_score": g["plan_ok"]} for g in got])


def run_rl_stage(ctx, st: C.StageSettings, stage_index: int, params, stage_dir: str, ck: Checkpointer,
                 metrics: MetricsWriter, stop_flag) -> Any:
    """Train `st.steps` PPO steps from `params` (resuming from `ck`); returns the final params."""
    from pilotrl_jax.rewards import JudgeRequest, compute_rewards

    cfg = ctx.cfg
    fns = ppo.build(ctx.model_cfg, st.ppo, ctx.mesh)
    ref_params = params if st.ppo.needs_ref else None
    offset = int(cfg.rollout.get("rl_seed_offset", 0))
    state = ppo.init_train_state(ctx.model_cfg, st.ppo, params, ppo_rng(cfg.seed, stage_index, offset), mesh=ctx.mesh)
    start = 0
    got = ck.restore_latest(state.params, _rest_of(state))
    if got is not None:
        start, p, rest, _ = got
        state = state.replace(params=p, **rest)
        dist.log0(f"[{st.name}] resumed from step {start}")
    metrics.truncate_after(start)
    plan = multihost.plan_rows(ctx.mesh, st.tasks_per_step, st.group_size)
    if plan.reason:
        dist.log0(f"[{st.name}] rollout rows are all-gathered over hosts: {plan.reason}")
    rows = plan.local_rows
    if int(cfg.rollout.max_batch):
        rows = min(rows, int(cfg.rollout.max_batch))
    # (rollout.kv_cache='paged': the memory of `rows` dense rows, up to all of the host's episodes at once)
    engine = make_engine(ctx, state.params, rows, seed=int(cfg.seed), episodes=plan.local_rows)
    planner = make_planner(ctx, st)
    judge = make_judge(ctx, st, params)
    best = -1.0
    for step in range(start, st.steps):
        t0 = time.perf_counter()
        if multihost.is_multihost():
            engine.params = None  # drop the old host copy before the new one lands (HBM peak)
        engine.params = multihost.sampler_params(ctx, state.params)
        tasks = step_tasks(ctx.rl_pool, st.tasks_per_step, step, int(cfg.seed) + stage_index)
        rc = rollout_config(ctx, group_size=st.group_size, mode=st.mode, replan=st.replan,
                            temperature=float(cfg.rollout.temperature), top_p=float(cfg.rollout.top_p),
                            seed=multihost.host_seed(rollout_seed(cfg.seed, stage_index, step, offset)), progress=False)
        policy = SamplerPolicy(engine, rc.temperature, rc.top_p, rc.top_k)
        batch = RolloutRunner(policy, ctx.env_factory, ctx.tokenizer, rc, planner=planner).run(
            [tasks[g] for g in plan.groups])  # this host's groups (all of them on one host)
        for e in batch.episodes:
            e.group_id = plan.groups[e.group_id]  # the group's index in the step: global GRPO group ids
        check_rollout(batch.episodes, st.name, step)
        t_roll = time.perf_counter() - t0
        judgements = [None] * len(batch.episodes)
        judge_stats = {}
        if judge is not None:
            started = [i for i, e in enumerate(batch.episodes) if e.agent is not None]
            got = judge.score([JudgeRequest.from_episode(batch.episodes[i].agent, batch.episodes[i].task_id)
                               for i in started])
            for i, j in zip(started, got):
                judgements[i] = j
            judge_stats = {f"judge/{k}": v for k, v in judge.stats().items() if isinstance(v, (int, float))}
        rewards = compute_rewards([episode_summary(e, j) for e, j in zip(batch.episodes, judgements)], st.reward,
                                  groups=[e.group_id for e in batch.episodes])  # a failed judgement: its group's mean
        bucket = seq_bucket(ctx.cfg)
        if multihost.is_multihost():  # every host pads to the same bucket: one compiled shape
            arr = batch.to_arrays(pad_to=multihost.agreed_length(max(e.length for e in batch.episodes), bucket))
        else:
            arr = batch.to_arrays(bucket)
        rollout = training_batch(arr, st.trained_spans, rewards.reward,
                                 turn_credit(batch.episodes, rewards.components["outcome"], st.ppo,
                                             arr["input_ids"].shape[1], from_scores=st.reward.outcome == "score"),
                                 valid=np.array([e.status != "env_error" for e in batch.episodes]))
        if multihost.is_multihost():
            rollout = multihost.global_training_batch(rollout, plan, ctx.mesh)
        t1 = time.perf_counter()
        ppo_batch = fns.prepare(state, rollout, ref_params)
        state, mets = fns.step(state, ppo_batch)
        ppo_mets = {f"ppo/{k}": v for k, v in M.finalize(dist.to_host(mets)).items()}
        t_upd = time.perf_counter() - t1
        row = rollout_metrics(batch, rewards)
        row.update(ppo_mets)
        row.update(judge_stats)
        row.update({"time/rollout_s": t_roll, "time/update_s": t_upd, "time/step_s": time.perf_counter() - t0,
                    "batch/seq_len": arr["input_ids"].shape[1], "batch/episodes": plan.rows})
        if multihost.is_multihost():  # rollout metrics over every host's episodes (ppo/* are global already)
            local = {k: v for k, v in row.items() if not k.startswith(("ppo/", "batch/"))}
            reduced = host_rollout_metrics(local, batch, rewards)
            row = {k: reduced.get(k, v) for k, v in row.items()}
        do_eval = int(cfg.eval.every) > 0 and (step + 1) % int(cfg.eval.every) == 0 and step + 1 < st.steps
        if do_eval:
            table, _ = evaluate(ctx, state.params, ctx.eval_tasks[: int(cfg.eval.num_tasks)], mode=st.mode,
                                replan=st.replan, progress=False)
            row["eval/success"] = table["success_rate"]
            if table["success_rate"] > best:
                best = table["success_rate"]
                ck.save_params_copy("best", state.params)
        metrics.write(step + 1, row)
        dist.log0(f"[{st.name}] step {step + 1}/{st.steps} reward {row['reward/mean']:+.3f} "
                  f"success {row['success/train']:.2f} len {row['length/mean']:.0f} "
                  f"({row['time/step_s']:.1f}s)")
        last = step + 1 == st.steps
        stopping = agreed_stop(stop_flag)
        if (step + 1) % int(cfg.checkpoint.every) == 0 or last or stopping:
            ck.save(step + 1, state.params, _rest_of(state),
                    {"stage": st.name, "data_pos": (step + 1) * st.tasks_per_step, "seed": int(cfg.seed)},
                    force=stopping)
        if stopping:
            break
    return state.params


def final_eval(ctx, st: C.StageSettings, params, stage_dir: str) -> list:
    """Evaluate a stage's final params on held-out tasks in every eval mode; writes eval.json."""
    rows = []
    for mode in C.eval_modes(ctx.cfg, st.name):
        t0 = time.perf_counter()
        table, batch = evaluate(ctx, params, ctx.eval_tasks[: int(ctx.cfg.eval.num_tasks)], mode=mode,
                                group_size=int(ctx.cfg.eval.group_size), progress=True)
        rows.append(dict(model=st.name, mode=mode, seed=int(ctx.cfg.seed), split=ctx.cfg.env.eval_split,
                         wall_s=time.perf_counter() - t0, **table))
        if jax.process_index() == 0:
            batch.to_jsonl(os.path.join(stage_dir, f"eval_{mode}.jsonl"))
    if jax.process_index() == 0:
        with open(os.path.join(stage_dir, "eval.json"), "w") as f:
            json.dump(rows, f, indent=2)
    return rows


def run_pipeline(cfg, workdir: str, evaluate_stages: bool = True) -> dict:
    """Run (or resume) every stage of `cfg.pipeline`; returns {stage: {'final': dir, 'eval': rows}}."""
    C.validate(cfg)
    memory_plan.check(cfg, log=dist.log0)  # before any params exist: derives rollout.max_batch=0 or refuses by key
    ctx = S.build_context(cfg, workdir)
    if jax.process_index() == 0:
        with open(os.path.join(ctx.workdir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2))
    stop = StopFlag().install()
    out: dict = {}
    prev: Optional[str] = None
    try:
        for i, name in enumerate(C.pipeline(cfg)):
            st = C.resolve_stage(cfg, name)
            stage_dir = os.path.join(ctx.workdir, name)
            ck_dir = os.path.join(stage_dir, "checkpoints")
            final = os.path.join(ck_dir, "final")
            done = os.path.join(stage_dir, "DONE")
            if os.path.exists(done):
                prev = final
                with open(os.path.join(stage_dir, "eval.json")) as f:
                    out[name] = {"final": final, "eval": json.load(f)}
                dist.log0(f"[{name}] already done; using {final}")
                continue
            start_from = out[st.init_from]["final"] if st.init_from in out else prev
            if start_from is None or st.init_from == "base":
                params, start_from = ctx.load_base_params(), None
            else:
                params = S.load_params_any(start_from, False, ctx.model_cfg, ctx.mesh)
            checksum = params_checksum(params)  # every host: a collective on several
            if jax.process_index() == 0:
                os.makedirs(stage_dir, exist_ok=True)
                with open(os.path.join(stage_dir, "init.json"), "w") as f:
                    json.dump({"init_from": start_from or ctx.base_path, "checksum": checksum}, f)
            ck = Checkpointer(ck_dir, ctx.model_cfg, keep=int(cfg.checkpoint.keep),
                              async_save=bool(cfg.checkpoint.async_save))
            S.save_tokenizer_next_to(ctx, ck_dir)
            metrics = MetricsWriter(stage_dir)
            try:
                if st.kind == "sft":
                    params = run_sft_stage(ctx, st, params, stage_dir, ck, metrics, stop)
                else:
                    params = run_rl_stage(ctx, st, i, params, stage_dir, ck, metrics, stop)
                ck.wait()
                if agreed_stop(stop):
                    raise Preempted()
                ck.save_params_copy("final", params)
            finally:
                ck.close()
                metrics.close()
            evaluate_this = evaluate_stages and name in C.evaluated_stages(cfg)
            rows = final_eval(ctx, st, params, stage_dir) if evaluate_this else []
            if jax.process_index() == 0:
                if not evaluate_this:
                    with open(os.path.join(stage_dir, "eval.json"), "w") as f:
                        json.dump(rows, f)
                open(done, "w").close()
            out[name] = {"final": final, "eval": rows}
            prev = final
    finally:
        stop.uninstall()
    if jax.process_index() == 0:
        plot_curves({n: os.path.join(ctx.workdir, n) for n in C.pipeline(cfg)}, os.path.join(ctx.workdir, "curves.png"))
    return out
