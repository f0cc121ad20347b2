"""The host-side rollout loop: N tasks x G samples of AdaPlan/ReAct episodes, batched sampling.

    runner = RolloutRunner(SamplerPolicy(engine, temperature=1.0), envs, tokenizer, RolloutConfig(group_size=4))
    batch = runner.run(tasks)              # -> RolloutBatch; batch.to_arrays() for training

How a rollout runs:
- Live episodes sit in slots (as many as the sampler has rows, envs exist, `max_live` allows); slot
  s belongs to cohort s % num_cohorts. A finished episode releases its sampler row and its env, and
  the next queued episode takes the slot (its env reset runs in the background).
- The main thread visits cohorts in turn: it waits for the cohort's pending env calls, folds their
  observations into the episodes (asking the plan source for stage-1 plans in one batch), then
  samples: one `generate` per kind of request (plan / action, each with its stop strings and token
  limit) over every episode of the cohort that needs it, until each episode waits on its env or is
  done. Env calls (reset, step, and the expert when a forced policy or expert plans need it) run in
  a thread pool (ProcessEnvs from an `EnvPool` for JVM engines), so one cohort's env steps overlap
  the next cohort's sampling. Which episodes share a generate call depends only on the slots, never
  on timing, so a rollout is deterministic given seeds (sampler seed per episode from
  (seed, task index, sample index); environments are deterministic given the task).
- Token-in/token-out: the sampler is fed exactly `AgentEpisode.prompt_for_next()` and its sampled
  ids go back unchanged; an episode's spans equal the tokens the sampler conditioned on. A plan
  generation that ended on the end-of-turn token is followed by a new assistant header (a PROMPT
  span the episode adds), so the executor's generation starts a new assistant message.
- Endings: success / env_done / max_turns (AgentEpisode), budget (the next turn would not fit the
  episode's token budget, or a generation was cut by it), env_error (the env raised or its process
  died or hung), format_errors (max_format_errors malformed turns).
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import queue
import time
from typing import Any, Optional, Sequence

import numpy as np

from pilotrl_jax.agent import prompts
from pilotrl_jax.agent.adaplan import AgentEpisode
from pilotrl_jax.agent.spans import SpanKind
from pilotrl_jax.agent.tokenizer import as_chat_tokenizer
from pilotrl_jax.envs.base import ExpertActions, Task
from pilotrl_jax.rollout.batch import EpisodeResult, RolloutBatch
from pilotrl_jax.rollout.plans import FALLBACK_PLAN, PlanRequest
from pilotrl_jax.rollout.policies import SamplerPolicy
from pilotrl_jax.sampling.engine import SamplerEngine


@dataclasses.dataclass
class RolloutConfig:
    """Agent mode, limits, sampling settings and scheduling of a rollout."""

    group_size: int = 1  # G episodes per task (the GRPO group)
    mode: str = "adaplan"  # adaplan | react
    replan: Optional[str] = "every_step"  # every_step | on_demand | static (adaplan)
    max_turns: int = 30  # executor turns (env actions) per episode
    max_plan_tokens: int = 256  # per plan generation
    max_action_tokens: int = 128  # per thought+action generation
    token_budget: Optional[int] = None  # tokens per episode (prompt included); default: the sampler's max_len
    max_format_errors: Optional[int] = None  # end with status format_errors after this many; None: no limit
    show_admissible: bool = False  # list admissible actions in observations
    prompt_style: str = "full"  # full | compact (agent.prompts.PROMPT_STYLES)
    exemplar: str = ""  # a worked example episode's text, appended to every system prompt (agent.prompts.exemplar_text)
    temperature: float = 1.0  # used when the runner wraps a bare SamplerEngine
    top_p: float = 1.0
    top_k: int = 0
    num_cohorts: int = 2  # 1: lockstep (sample all, then step all); 2+: env steps overlap sampling
    max_live: Optional[int] = None  # cap on episodes held at once (default: sampler rows / envs)
    env_threads: Optional[int] = None  # threads running env calls (default: one per live episode, or 1 for
    # in-process engines that are not thread-safe, NOT_THREAD_SAFE: ALFWorld/TextWorld): serial calls still
    # overlap sampling. ProcessEnvs (EnvPool) are safe with any number.
    seed: int = 0
    progress: bool = True  # tqdm bar over finished episodes
    verify_tokens: bool = True  # check spans == sampler tokens at every episode's end

    def __post_init__(self):
        prompts.check_mode(self.mode, self.replan)
        for name in ("group_size", "max_turns", "max_plan_tokens", "max_action_tokens", "num_cohorts"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"RolloutConfig.{name}={v!r}; expected a positive int")
        for name in ("token_budget", "max_format_errors", "max_live", "env_threads"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"RolloutConfig.{name}={v!r}; expected a positive int or None")


def episode_seed(seed: int, group_id: int, sample: int) -> int:
    """The sampler seed of episode (group_id, sample) in a rollout seeded with `seed`."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(group_id), int(sample)]).generate_state(1)[0])


# ----------------------------------------------------------------------------- environments
# In-process engines that must not be called from several threads at once (TextWorld's parsers).
NOT_THREAD_SAFE = ("AlfWorldEnv",)


class _EnvProvider:
    """Hands out envs for episodes: from a list, an EnvPool, or a factory (built lazily)."""

    def __init__(self, envs: Any, limit: int):
        self.thread_safe = True
        self._pool = None
        self._factory = None
        self._free: "queue.Queue" = queue.Queue()
        if hasattr(envs, "acquire") and hasattr(envs, "release"):
            self._pool = envs
            self.size = len(envs)
        elif callable(envs):
            self._factory = envs
            self.size = limit
            self._built = 0
            self.owned: list = []
        elif isinstance(envs, (list, tuple)) and envs:
            for e in envs:
                if not (hasattr(e, "reset") and hasattr(e, "step")):
                    raise TypeError(f"envs holds a {type(e).__name__}; expected TextEnv objects (reset/step)")
                self._free.put(e)
                if type(e).__name__ in NOT_THREAD_SAFE:
                    self.thread_safe = False
            self.size = len(envs)
        else:
            raise TypeError(f"envs={envs!r}; expected a non-empty list of TextEnvs, an EnvPool, or a factory "
                            "callable () -> TextEnv")

    def acquire(self):
        """An env for a new episode (a broken ProcessEnv is restarted first)."""
        if self._pool is not None:
            return self._pool.acquire()
        if self._factory is not None:
            try:
                env = self._free.get_nowait()
            except queue.Empty:
                env = self._factory()
                self.owned.append(env)
        else:
            env = self._free.get()
        if getattr(env, "broken", False) and hasattr(env, "restart"):
            try:
                env.restart()
            except BaseException:
                self._free.put(env)
                raise
        return env

    def release(self, env) -> None:
        """Give an env back."""
        if self._pool is not None:
            self._pool.release(env)
        else:
            self._free.put(env)

    def close_owned(self) -> None:
        """Close the envs built by the factory."""
        for e in getattr(self, "owned", []):
            try:
                e.close()
            except Exception:  # noqa: BLE001
                pass


# ----------------------------------------------------------------------------- per-episode state
class _Live:
    """The runner's view of one running episode (also the `context` a forced policy receives)."""

    def __init__(self, row: int, task: Task, group_id: int, sample: int, seed: int, slot: int):
        self.row, self.task, self.group_id, self.sample, self.seed, self.slot = row, task, group_id, sample, seed, slot
        self.episode: Optional[AgentEpisode] = None
        self.env = None
        self.handle = None
        self.future: Optional[cf.Future] = None
        self.request = None
        self.expert = None
        self.info: dict = {}
        self.plan_stash = None
        self.error: Optional[str] = None
        self.fed = 0  # tokens the policy holds for this episode

    def take_plan(self, _ep=None):
        """The plan the planner computed for the turn being opened (AgentEpisode's plan_source)."""
        steps, self.plan_stash = self.plan_stash, None
        if steps is None and (self.episode is None or self.episode.plan is None):
            return list(FALLBACK_PLAN)
        return steps


def _job_reset(provider: _EnvProvider, live: _Live, want_expert: bool):
    env = provider.acquire()
    live.env = env
    obs, info = env.reset(live.task)
    return "reset", obs, info, _expert(env) if want_expert else None


def _job_step(live: _Live, action: str, want_expert: bool):
    res = live.env.step(action)
    return "step", res, None, _expert(live.env) if want_expert and not res.done else None


def _expert(env):
    try:
        got = env.expert_actions()
    except Exception:  # noqa: BLE001 - an expert failure is not an env failure; a dead env fails the next step
        return None
    if got is None:
        return None
    return got if isinstance(got, ExpertActions) else list(got)


def _slim_info(info: dict) -> dict:
    return {k: v for k, v in (info or {}).items() if k != "admissible_actions"}


# ----------------------------------------------------------------------------- the runner
class RolloutRunner:
    """Runs episodes of many tasks at once: batched sampling per cohort, env steps in a thread pool."""

    def __init__(self, policy: Any, envs: Any, tokenizer: Any, config: Optional[RolloutConfig] = None,
                 planner: Any = None):
        self.config = cfg = config or RolloutConfig()
        if not isinstance(cfg, RolloutConfig):
            raise TypeError(f"config must be a RolloutConfig, got {type(cfg).__name__}")
        if isinstance(policy, SamplerEngine):
            policy = SamplerPolicy(policy, cfg.temperature, cfg.top_p, cfg.top_k)
        for m in ("start", "append", "generate", "release", "tokens"):
            if not hasattr(policy, m):
                raise TypeError(f"policy {type(policy).__name__} lacks .{m}(); pass a SamplerEngine, SamplerPolicy "
                                "or ForcedPolicy")
        self.chat = as_chat_tokenizer(tokenizer)
        if isinstance(policy, SamplerPolicy) and policy.stop_token_ids is None:
            policy.stop_token_ids = self.chat.end_of_turn_ids
        self.policy = policy
        if planner is not None:
            if not hasattr(planner, "plans"):
                raise TypeError(f"planner {type(planner).__name__} lacks .plans(requests); use ExpertPlans, "
                                "EndpointPlans or CheckpointPlans")
            if cfg.mode == "react":
                raise ValueError("a planner (external plans) needs mode='adaplan', not 'react' (no plan); drop planner "
                                 "or use mode='adaplan'")
        self.planner = planner
        self.budget = cfg.token_budget or policy.max_len
        if self.budget > policy.max_len:
            raise ValueError(f"RolloutConfig.token_budget={self.budget} exceeds the sampler's max_len="
                             f"{policy.max_len}; lower the budget or build the engine with a larger max_len")
        self.want_expert = bool(getattr(policy, "needs_expert", False) or getattr(planner, "needs_expert", False))
        self._envs_arg = envs
        self.stats: dict = {}

    # ------------------------------------------------------------------ public
    def run(self, tasks: Sequence[Task]) -> RolloutBatch:
        """Run group_size episodes of every task; returns them in task-major order."""
        tasks = list(tasks)
        if not tasks:
            raise ValueError("tasks is empty; pass at least one Task (see pilotrl_jax.envs.registry.load_tasks)")
        for i, t in enumerate(tasks):
            if not isinstance(t, Task):
                raise TypeError(f"tasks[{i}] is a {type(t).__name__}; expected pilotrl_jax.envs.base.Task")
            prompts.check_env(t.env)
        cfg = self.config
        G = cfg.group_size
        todo = [(i * G + g, t, i, g) for i, t in enumerate(tasks) for g in range(G)]
        n_slots = min(len(todo), self.policy.capacity, cfg.max_live or len(todo))
        provider = _EnvProvider(self._envs_arg, n_slots)
        n_slots = min(n_slots, provider.size)
        if n_slots < 1:
            raise ValueError("no room for any episode: the sampler has no free rows; release() old episodes")
        self._provider = provider
        self._queue = list(reversed(todo))
        self._slots: list = [None] * n_slots
        self._results: dict = {}
        st = self.stats = {"generate_s": 0.0, "env_wait_s": 0.0, "plan_s": 0.0, "generate_calls": 0,
                           "generated_rows": 0, "policy_tokens": 0, "env_calls": 0, "slots": n_slots}
        t_start = time.perf_counter()
        bar = None
        if cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="rollout", unit="ep", leave=False)
        self._bar = bar
        threads = cfg.env_threads or (n_slots if provider.thread_safe else 1)
        pool = cf.ThreadPoolExecutor(max_workers=min(n_slots, threads),
                                     thread_name_prefix="rollout-env")
        self._pool = pool
        try:
            self._admit()
            K = cfg.num_cohorts
            while any(s is not None for s in self._slots):
                for c in range(K):
                    lives = [l for l in self._slots[c::K] if l is not None]
                    if not lives:
                        continue
                    self._absorb(lives)
                    self._sample(lives)
                    self._admit()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for l in self._slots:  # only on an exception: give rows and envs back
                if l is not None:
                    self._release(l)
            if bar is not None:
                bar.close()
            provider.close_owned()
        st["wall_s"] = time.perf_counter() - t_start
        st["model_busy"] = st["generate_s"] / max(st["wall_s"], 1e-9)
        st["episodes_per_s"] = len(todo) / max(st["wall_s"], 1e-9)
        st["mean_generate_rows"] = st["generated_rows"] / max(st["generate_calls"], 1)
        return RolloutBatch([self._results[r] for r in range(len(todo))], dict(st))

    # ------------------------------------------------------------------ scheduling
    def _admit(self) -> None:
        """Fill free slots with queued episodes and start their env resets."""
        for s in range(len(self._slots)):
            if self._slots[s] is None and self._queue:
                row, task, gid, g = self._queue.pop()
                live = _Live(row, task, gid, g, episode_seed(self.config.seed, gid, g), s)
                self._slots[s] = live
                live.future = self._pool.submit(_job_reset, self._provider, live, self.want_expert)
                self.stats["env_calls"] += 1

    def _absorb(self, lives: list) -> None:
        """Wait for the cohort's env calls and fold their results into the episodes."""
        pending = [l.future for l in lives if l.future is not None]
        if not pending:
            return
        t0 = time.perf_counter()
        cf.wait(pending)
        self.stats["env_wait_s"] += time.perf_counter() - t0
        done = []
        for l in lives:
            if l.future is None:
                continue
            fut, l.future = l.future, None
            try:
                kind, a, b, expert = fut.result()
            except Exception as e:  # noqa: BLE001 - any env failure ends only this episode
                l.error = f"{type(e).__name__}: {e}"
                self._finish(l, "env_error")
                continue
            l.expert = expert
            done.append((l, kind, a, b))
        # Stage-1 plans for every episode about to open a turn that wants one, in one planner call.
        if self.planner is not None:
            asks = []
            for l, kind, a, b in done:
                if kind == "reset":
                    asks.append((l, PlanRequest(l.task.env, l.task.task_id, [a], [], None, l.expert)))
                elif self._wants_plan(l, a):
                    ep = l.episode
                    asks.append((l, PlanRequest(l.task.env, l.task.task_id, ep.observations + [a.observation],
                                                list(ep.actions), ep.plan, l.expert)))
            if asks:
                t0 = time.perf_counter()
                steps = self.planner.plans([r for _, r in asks])
                self.stats["plan_s"] += time.perf_counter() - t0
                if len(steps) != len(asks):
                    raise RuntimeError(f"planner {type(self.planner).__name__}.plans returned {len(steps)} plans "
                                       f"for {len(asks)} requests; return one (or None) per request")
                for (l, _), s in zip(asks, steps):
                    l.plan_stash = None if not s else list(s)
        cfg = self.config
        for l, kind, a, b in done:
            if kind == "reset":
                l.episode = AgentEpisode(
                    l.task, cfg.mode, cfg.replan, plan_source=l.take_plan if self.planner is not None else None,
                    tokenizer=self.chat, show_admissible=cfg.show_admissible, max_turns=cfg.max_turns,
                    prompt_style=cfg.prompt_style, exemplar=cfg.exemplar)
                l.info = dict(b or {})
                l.episode.start(a, b)
            else:
                l.info = dict(a.info or {})
                l.episode.add_observation(a.observation, done=bool(a.done), info=a.info)
            if l.episode.done:
                self._finish(l, None)
            else:
                l.request = l.episode.next_request()

    def _wants_plan(self, l: _Live, res) -> bool:
        ep = l.episode
        if res.done or ep.num_turns >= self.config.max_turns:
            return False
        return ep.replan in ("every_step", "on_demand")

    def _sample(self, lives: list) -> None:
        """Generate for the cohort until every episode waits on its env or is done."""
        cfg = self.config
        while True:
            ready = [l for l in lives if l.episode is not None and not l.episode.done and l.future is None
                     and l.request is not None]
            if not ready:
                return
            groups: dict = {}
            for l in ready:
                groups.setdefault((int(l.request.kind), l.request.stop_strings), []).append(l)
            for (kind, stops), members in sorted(groups.items()):
                cap = cfg.max_plan_tokens if kind == int(SpanKind.PLAN) else cfg.max_action_tokens
                go, limits, cut, starts, appends = [], [], [], [], []
                for l in members:
                    ids = l.episode.prompt_for_next()
                    room = self.budget - l.fed - len(ids)
                    if room < 1:
                        self._finish(l, "budget")
                        continue
                    lim = min(cap, room)
                    (starts if l.handle is None else appends).append((l, ids))
                    l.fed += len(ids)
                    go.append(l)
                    limits.append(lim)
                    cut.append(lim < cap)
                if not go:
                    continue
                t0 = time.perf_counter()
                if starts:
                    hs = self.policy.start([ids for _, ids in starts], seeds=[l.seed for l, _ in starts])
                    for (l, _), h in zip(starts, hs):
                        l.handle = h
                if appends:
                    self.policy.append([l.handle for l, _ in appends], [ids for _, ids in appends])
                results = self.policy.generate([l.handle for l in go], limits, stops, contexts=go)
                self.stats["generate_s"] += time.perf_counter() - t0
                self.stats["generate_calls"] += 1
                self.stats["generated_rows"] += len(go)
                for l, r, budget_cut in zip(go, results, cut):
                    self.stats["policy_tokens"] += len(r.tokens)
                    l.fed += len(r.tokens)
                    turn = l.episode.add_policy_output(r.tokens, r.logprobs)
                    l.request = None
                    if r.stop_reason == "cache_full" or (budget_cut and r.stop_reason == "max_tokens"):
                        self._finish(l, "budget")
                    elif cfg.max_format_errors is not None and l.episode.format_errors >= cfg.max_format_errors:
                        self._finish(l, "format_errors")
                    elif turn.env_action is not None:
                        l.future = self._pool.submit(_job_step, l, turn.env_action, self.want_expert)
                        self.stats["env_calls"] += 1
                    else:
                        l.request = l.episode.next_request()

    # ------------------------------------------------------------------ endings
    def _finish(self, l: _Live, status: Optional[str]) -> None:
        """End an episode (status None: AgentEpisode already ended it), record it, free its slot."""
        ep = l.episode
        if ep is not None and not ep.done:
            ep.finish(status)
        spans = []
        if ep is not None:
            # Spans the sampler never saw (an observation that no longer fits the budget) are dropped.
            total = 0
            for s in ep.spans:
                if total + len(s.token_ids) > l.fed:
                    break
                spans.append(s)
                total += len(s.token_ids)
            del ep.spans[len(spans):]
            if not ep.final_info:  # ended by the runner: the last info the env gave
                ep.final_info = dict(l.info)
            if self.config.verify_tokens and l.handle is not None:
                seq = [t for s in spans for t in s.token_ids]
                if seq != self.policy.tokens(l.handle):
                    raise RuntimeError(f"episode {l.task.task_id}/{l.sample}: spans differ from the tokens the "
                                       "sampler conditioned on (a token-in/token-out bug)")
        final = status or ep.status
        info = ep.final_info if ep is not None and ep.final_info else l.info
        won = bool(info.get("won", False)) and final == "success"
        self._results[l.row] = EpisodeResult(
            task_id=l.task.task_id, group_id=l.group_id, sample=l.sample, seed=l.seed, status=final,
            score=float(info.get("score", 0.0) or 0.0), won=won,
            format_errors=ep.format_errors if ep is not None else 0,
            num_turns=ep.num_turns if ep is not None else 0, spans=spans, error=l.error,
            plan_history=[(t, SpanKind(k).name.lower(), tuple(s)) for t, k, s in ep.plan_history] if ep else [],
            info=_slim_info(info), agent=ep)
        self._release(l)
        if self._bar is not None:
            self._bar.update(1)

    def _release(self, l: _Live) -> None:
        if l.handle is not None:
            self.policy.release([l.handle])
            l.handle = None
        if l.env is not None:
            self._provider.release(l.env)
            l.env = None
        if self._slots[l.slot] is l:
            self._slots[l.slot] = None


def collect(tasks: Sequence[Task], policy: Any, envs: Any, tokenizer: Any, config: Optional[RolloutConfig] = None,
            planner: Any = None, **overrides) -> RolloutBatch:
    """Run a rollout in one call: `collect(tasks, engine, envs, tok, group_size=4)` -> RolloutBatch."""
    cfg = config or RolloutConfig()
    if overrides:
        bad = sorted(set(overrides) - {f.name for f in dataclasses.fields(RolloutConfig)})
        if bad:
            raise ValueError(f"collect got unknown option(s) {bad}; RolloutConfig fields are "
                             f"{[f.name for f in dataclasses.fields(RolloutConfig)]}")
        cfg = dataclasses.replace(cfg, **overrides)
    return RolloutRunner(policy, envs, tokenizer, cfg, planner).run(tasks)
