"""What every stage of a run shares: tasks, environment factory, tokenizer, model config, base params.

Everything that must stay identical across stages and resumes (the built tokenizer, a tiny model's
initial params, generated games) is written once under the run's workdir and read back afterwards.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Optional

import jax

from pilotrl_jax import distributed as dist
from pilotrl_jax import sharding as sh
from pilotrl_jax.envs import registry
from pilotrl_jax.models import hf_io, llama, param_store
from pilotrl_jax.models.config import LlamaConfig
from pilotrl_jax.train.config import _split


@dataclasses.dataclass
class RunContext:
    """Shared state of one run (all stages)."""

    cfg: Any
    workdir: str
    model_cfg: LlamaConfig
    tokenizer: Any
    mesh: Any
    train_tasks: list  # the SFT demonstrations' tasks (and the RL stages', unless rl_tasks is set)
    eval_tasks: list
    env_factory: Callable[[], Any]
    base_path: str  # HF dir or param_store dir of the base model
    base_is_hf: bool
    rl_tasks: Optional[list] = None  # a separate pool for the RL stages (config.env.num_rl_tasks)
    # (mode, replan) -> (task_id, text) of the example episode in the system prompt (agent.exemplar),
    # built on first use and kept for the run: every rollout of a mode shows the same one
    exemplars: dict = dataclasses.field(default_factory=dict)

    @property
    def rl_pool(self) -> list:
        """The tasks RL stages draw from: the separate RL pool when there is one, else the train tasks."""
        return self.rl_tasks or self.train_tasks

    def load_base_params(self):
        """The base model's params (placed on the mesh when there is one)."""
        return load_params_any(self.base_path, self.base_is_hf, self.model_cfg, self.mesh)


def model_overrides(cfg) -> dict:
    """Our own model fields (dtype, scan, remat, attention blocks) from the config."""
    from pilotrl_jax.models.config import run_config_overrides

    return run_config_overrides(cfg.model)


def load_params_any(path: str, is_hf: bool, model_cfg: LlamaConfig, mesh=None):
    """Params from an HF directory or a param_store checkpoint, in `model_cfg`'s layout."""
    ours = model_cfg.ours()
    if is_hf:
        _, params = hf_io.load_hf(path, mesh=mesh, **ours)
    else:
        _, params = param_store.load_params(path, mesh=mesh, **ours)
    return params


def use_compilation_cache(workdir: str) -> None:
    """Keep compiled steps in `workdir`/.jax_cache so reruns and resumes reuse them (unless
    JAX_COMPILATION_CACHE_DIR already names a cache)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(workdir), ".jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def make_mesh(cfg):
    """The device mesh from config.mesh (None on a single device)."""
    if jax.device_count() == 1:
        return None
    return sh.make_mesh(dict(cfg.mesh.to_dict()))


def env_task_kwargs(cfg, workdir: str) -> dict:
    """Family-specific `load_tasks` kwargs (ALFWorld games are generated under the workdir)."""
    e = cfg.env
    if e.name == "alfworld":
        kw = dict(out_dir=os.path.join(workdir, "games"), n_train=int(e.num_train_tasks),
                  n_heldout=int(e.num_eval_tasks))
        if int(e.get("num_rl_tasks", 0)):
            kw["n_rl"] = int(e.num_rl_tasks)
        if int(e.get("train_layouts", 0)):
            kw["train_layouts"] = int(e.train_layouts)
        if e.task_types:
            kw["task_types"] = list(_split(e.task_types))
        if e.get("room_size", "full") != "full":
            kw["room_size"] = str(e.room_size)
        return kw
    return {}


def load_splits(cfg, workdir: str) -> tuple[list, list]:
    """(train tasks, held-out tasks) for the run's environment."""
    e = cfg.env
    kw = env_task_kwargs(cfg, workdir)
    if e.name == "alfworld":
        train = registry.load_tasks("alfworld", e.train_split, None, cfg.seed, **kw)
        held = registry.load_tasks("alfworld", e.eval_split, None, cfg.seed, **kw)
    else:
        train = registry.load_tasks(e.name, e.train_split, int(e.num_train_tasks), cfg.seed, **kw)
        held = registry.load_tasks(e.name, e.eval_split, int(e.num_eval_tasks), cfg.seed, **kw)
    if not train or not held:
        raise ValueError(f"env {e.name!r} gave {len(train)} train and {len(held)} held-out tasks; "
                         "check config.env.num_train_tasks / num_eval_tasks / splits")
    return train, held


def load_rl_tasks(cfg, workdir: str) -> Optional[list]:
    """The separate pool of RL tasks (`env.num_rl_tasks`, ALFWorld: rooms neither the train nor the
    held-out tasks have), or None when RL stages draw from the train tasks."""
    if not int(cfg.env.get("num_rl_tasks", 0)):  # other envs are refused by config.validate
        return None
    return registry.load_tasks("alfworld", "rl", None, cfg.seed, **env_task_kwargs(cfg, workdir))


def env_factory(cfg) -> Callable[[], Any]:
    """A () -> TextEnv factory for the run's environment."""
    e = cfg.env
    kwargs = dict(e.kwargs.to_dict()) if e.kwargs else {}
    return functools.partial(registry.make_env, e.name, isolate=bool(e.isolate), **kwargs)


def expert_corpus(factory: Callable[[], Any], tasks: list, env_name: str, thought: Optional[str] = "full") -> list[str]:
    """Text of expert episodes (observations, plan steps, executor turns as the expert writes them with
    the `thought` style, or the bare commands when `thought` is None): a tokenizer's training corpus."""
    from pilotrl_jax.rollout.policies import executor_text, expert_plan_from_actions

    texts: list[str] = []
    env = factory()
    try:
        for task in tasks:
            obs, _ = env.reset(task)
            texts.append(obs)
            for _ in range(60):
                acts = env.expert_actions() or []  # keep ExpertActions (its own plan steps)
                if not acts:
                    break
                texts.extend(expert_plan_from_actions(env_name, acts) or [])
                res = env.step(acts[0])
                turn = acts[0] if thought is None else executor_text(acts[0], getattr(acts, "step", None), thought)
                texts.extend([turn, res.observation])
                if res.done:
                    break
    finally:
        env.close()
    return texts


def _tokenizer(cfg, workdir: str, train_tasks: list, factory) -> Any:
    import transformers

    from pilotrl_jax.agent.tokenizer import build_word_tokenizer

    if cfg.tokenizer.path:
        return transformers.AutoTokenizer.from_pretrained(cfg.tokenizer.path)
    if cfg.model.source == "hf":
        return transformers.AutoTokenizer.from_pretrained(cfg.model.path)
    if cfg.model.source == "checkpoint":
        d = os.path.dirname(param_store.resolve_params_dir(cfg.model.path)[1])
        tok_dir = os.path.join(d, "tokenizer")
        if not os.path.exists(tok_dir):
            raise FileNotFoundError(f"no tokenizer next to checkpoint {cfg.model.path}; set config.tokenizer.path")
        return transformers.AutoTokenizer.from_pretrained(tok_dir)
    tok_dir = os.path.join(workdir, "tokenizer")
    have = os.path.exists(os.path.join(tok_dir, "tokenizer.json"))
    dist.sync("tokenizer")  # several hosts: every host looked before process 0 may write it
    if have:
        return transformers.AutoTokenizer.from_pretrained(tok_dir)
    corpus = expert_corpus(factory, train_tasks[: int(cfg.tokenizer.corpus_tasks)], cfg.env.name,
                           str(cfg.agent.get("thought_style", "full")) if cfg.tokenizer.get("executor_turns", False)
                           else None)
    corpus += env_vocabulary_corpus(cfg.env.name)
    tok = build_word_tokenizer(corpus, vocab_size=int(cfg.tokenizer.vocab_size))
    if jax.process_index() == 0:
        tok.save_pretrained(tok_dir)
    return tok


def check_chat_template(tok: Any, cfg) -> None:
    """Raise a ValueError naming the tokenizer's source (config key) when its chat template cannot carry
    AdaPlan (no system role, no generation prompt, not append-only); see agent.tokenizer.ChatTokenizer."""
    from pilotrl_jax.agent.tokenizer import ChatTokenizer

    try:
        ChatTokenizer(tok)
    except ValueError as e:
        src = (f"config.tokenizer.path={cfg.tokenizer.path!r}" if cfg.tokenizer.path else
               f"config.model.path={cfg.model.path!r}" if cfg.model.source != "tiny" else "the built tokenizer")
        raise ValueError(f"the run's tokenizer (from {src}) cannot be used: {e}") from e


def env_vocabulary_corpus(env_name: str, repeats: int = 20) -> list[str]:
    """Lines naming every object/receptacle of the env family, repeated so BPE keeps each name whole.

    A tiny model copies a name from the observation far more easily when it is one token; names
    that rarely occur in the expert corpus would otherwise be split into letters.
    """
    if env_name != "alfworld":
        return []
    from pilotrl_jax.envs.alfworld_gen import vocabulary

    line = ", ".join(f"a {w} 1" for w in vocabulary())
    return [f"you see {line}."] * int(repeats)


def build_context(cfg, workdir: str) -> RunContext:
    """Tasks, env factory, tokenizer, model config and base params location for a run."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_count() > 1:  # generated tasks (ALFWorld games): process 0 writes, the others reuse
        if dist.is_coordinator():
            train, held = load_splits(cfg, workdir)
        dist.sync("tasks")
        if not dist.is_coordinator():
            train, held = load_splits(cfg, workdir)
    else:
        train, held = load_splits(cfg, workdir)
    rl_tasks = load_rl_tasks(cfg, workdir)  # generated with the splits above: read back on every host
    factory = env_factory(cfg)
    tok = _tokenizer(cfg, workdir, train, factory)
    check_chat_template(tok, cfg)  # at start-up: a template that cannot carry AdaPlan fails before any rollout
    mesh = make_mesh(cfg)
    ours = model_overrides(cfg)
    m = cfg.model
    if m.source == "hf":
        model_cfg = LlamaConfig.from_json_file(os.path.join(m.path, "config.json"), **ours)
        base, is_hf = m.path, True
    elif m.source == "checkpoint":
        _, cfg_file = param_store.resolve_params_dir(m.path)
        with open(cfg_file) as f:
            model_cfg = param_store.config_from_json(json.load(f), **ours)
        base, is_hf = m.path, False
    else:
        eos = tok.convert_tokens_to_ids(tok.eos_token) if tok.eos_token else None
        model_cfg = LlamaConfig(
            vocab_size=len(tok), hidden_size=int(m.hidden_size), intermediate_size=int(m.intermediate_size),
            num_layers=int(m.num_layers), num_heads=int(m.num_heads), num_kv_heads=int(m.num_kv_heads),
            head_dim=int(m.head_dim), max_position_embeddings=max(4096, int(cfg.agent.token_budget)),
            bos_token_id=tok.bos_token_id, eos_token_ids=() if eos is None else (int(eos),),
            pad_token_id=tok.pad_token_id, tie_word_embeddings=bool(m.tie_word_embeddings), **ours,
        )
        base, is_hf = os.path.join(workdir, "base"), False
        # several hosts: every host looks before any writes, and all agree (the save is collective)
        have = os.path.exists(os.path.join(base, "params"))
        if jax.process_count() > 1:
            have = not dist.any_host(not have)
        if not have:
            params = llama.init_params(model_cfg, jax.random.PRNGKey(int(cfg.seed)), mesh=mesh)
            param_store.save_params(base, model_cfg, params)
    return RunContext(cfg=cfg, workdir=workdir, model_cfg=model_cfg, tokenizer=tok, mesh=mesh, train_tasks=train,
                      eval_tasks=held, env_factory=factory, base_path=base, base_is_hf=is_hf, rl_tasks=rl_tasks)


def save_tokenizer_next_to(ctx: RunContext, directory: str) -> None:
    """Copy the run's tokenizer into `directory/tokenizer` (export finds it there)."""
    if jax.process_index() == 0:
        ctx.tokenizer.save_pretrained(os.path.join(directory, "tokenizer"))


def task_types(tasks: list) -> list[str]:
    """Distinct task types, sorted."""
    return sorted({t.task_type or "all" for t in tasks})


# Train tasks the exemplar is chosen from (the expert's won episode with the fewest turns among them).
EXEMPLAR_CANDIDATES = 8
# The expert's limits while it writes the exemplar (the run's own when larger).
EXEMPLAR_LIMITS = dict(max_turns=30, max_plan_tokens=512, max_action_tokens=256, token_budget=8192)


def run_exemplar(ctx, mode: str, replan: Optional[str], kind: Optional[str] = None) -> str:
    """The example episode's text for rollouts in (mode, replan): '' when `kind` (None = the run's
    config.agent.exemplar) is '', else the run's expert exemplar, built once and cached in `ctx`."""
    from pilotrl_jax.agent import prompts

    kind = prompts.check_exemplar(str(ctx.cfg.agent.get("exemplar", "")) if kind is None else kind)
    if not kind:
        return ""
    key = (mode, replan if mode == "adaplan" else None)
    if key not in ctx.exemplars:
        ctx.exemplars[key] = expert_exemplar(ctx, *key)
    return ctx.exemplars[key][1]


def episode_exemplar(agent) -> str:
    """An AgentEpisode rendered as exemplar text (prompts.exemplar_text): its task, then each assistant
    turn's policy text verbatim (plan and thought+action) with the env's observation after it."""
    from pilotrl_jax.agent import prompts
    from pilotrl_jax.agent.spans import SpanKind

    turns, cur = [], ""
    for span in agent.spans[1:]:
        if span.kind in (SpanKind.PLAN, SpanKind.ACTION, SpanKind.EXTERNAL_PLAN):
            cur += span.text
        elif span.kind == SpanKind.OBSERVATION:
            turns.append(cur)
            cur = ""
    turns.append(cur)  # the last turn: the episode ended on its observation
    return prompts.exemplar_text(agent.observations[0], turns, agent.observations[1:])


def expert_exemplar(ctx, mode: str, replan: Optional[str]) -> tuple[str, str]:
    """(task_id, text) of the exemplar: the environment expert's won, format-clean episode with the fewest
    turns among the first EXEMPLAR_CANDIDATES train tasks (never held-out ones), whatever the run's turn limits.
    Deterministic: the tasks, the expert and the forced policy involve no sampling."""
    from pilotrl_jax.rollout import ForcedPolicy, RolloutRunner, expert_turn
    from pilotrl_jax.train.evaluation import rollout_config

    cfg = ctx.cfg
    held = {t.task_id for t in ctx.eval_tasks}
    tasks = [t for t in ctx.train_tasks if t.task_id not in held][:EXEMPLAR_CANDIDATES]  # never a held-out task
    if not tasks:
        raise ValueError("config.agent.exemplar='expert' needs the run's train tasks (the exemplar is an expert "
                         "episode on one of them, never on a held-out task) and this run has none; set "
                         "--config.agent.exemplar='' or load the train split (setup.build_context)")
    rc = rollout_config(ctx, group_size=1, mode=mode, replan=replan, temperature=1.0, top_p=1.0,
                        seed=int(cfg.seed), progress=False, exemplar="")
    # The example shows a whole episode, whatever the run's turn and token limits (they bound the model's
    # episodes; the expert's plan must not be cut at max_plan_tokens): the expert gets room of its own.
    lim = EXEMPLAR_LIMITS
    rc = dataclasses.replace(rc, max_live=len(tasks), max_turns=max(rc.max_turns, lim["max_turns"]),
                             max_plan_tokens=max(rc.max_plan_tokens, lim["max_plan_tokens"]),
                             max_action_tokens=max(rc.max_action_tokens, lim["max_action_tokens"]),
                             token_budget=max(rc.token_budget or 0, lim["token_budget"]), max_format_errors=None)
    thought = str(cfg.agent.get("thought_style", "full"))
    policy = ForcedPolicy(functools.partial(expert_turn, thought=thought), max_len=rc.token_budget)
    batch = RolloutRunner(policy, ctx.env_factory, ctx.tokenizer, rc).run(tasks)
    won = [e for e in batch.episodes if e.won and not e.format_errors and e.agent is not None]
    if not won:
        raise ValueError(f"config.agent.exemplar='expert': the expert solved none of the first {len(tasks)} train "
                         f"tasks in mode {mode!r} within {rc.max_turns} turns; set --config.agent.exemplar='' "
                         "(this environment's expert cannot demonstrate an episode)")
    best = min(won, key=lambda e: (e.num_turns, e.group_id))  # fewest actions: the same task in every mode
    text = episode_exemplar(best.agent)
    n = len(ctx.tokenizer.encode(text, add_special_tokens=False))
    if 2 * n > int(cfg.agent.token_budget):
        raise ValueError(f"config.agent.exemplar='expert': the example episode takes {n} tokens, more than half of "
                         f"config.agent.token_budget={cfg.agent.token_budget} (every episode's prompt holds it); "
                         "raise agent.token_budget or set --config.agent.exemplar=''")
    return best.task_id, text
