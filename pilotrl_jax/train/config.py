"""Training configuration: the base ConfigDict every file in `configs/` starts from, the stage
presets (SFT warm start, PilotRL stages 1-3), validation, and resolution into typed settings.

A run is a `pipeline` (comma-separated stage names, run in order; each stage starts from the
previous stage's final checkpoint). Global sections (`rl`, `reward`, `rollout`, `agent`, `env`) give
defaults; each `stages.<name>` section sets what the paper varies per stage: trained span kinds,
plan source, steps, learning rate, plan-score weight, KL, advantage estimator, re-planning mode.
Everything is overridable on the command line: `--config.stages.stage1.steps=5`.

Each setting has one home. A key the base config does not define is refused by name (`check_keys`),
and so is a key whose setting lives elsewhere (MOVED_KEYS: e.g. the learning rate is per stage,
`stages.<name>.lr`, so there is no `rl.lr`; the sampling temperature is `rollout.temperature`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from pilotrl_jax.agent import prompts
from pilotrl_jax.rewards.shaping import RewardConfig
from pilotrl_jax.rl.ppo_config import PPOConfig
from pilotrl_jax.rollout.policies import THOUGHT_STYLES

STAGE_KINDS = ("sft", "rl")
PLAN_SOURCES = ("expert", "policy", "http", "checkpoint")
TRAINABLE = ("plan", "action")
MODEL_SOURCES = ("tiny", "hf", "checkpoint")
JUDGES = ("grounded", "http", "local")
INIT_FROM = ("previous", "base")

# Settings with one home elsewhere: a config that sets one of these keys is refused, naming the home.
MOVED_KEYS = {
    "rl.lr": "config.stages.<stage>.lr (each stage has its own learning rate)",
    "rl.epochs": "config.stages.<stage>.ppo_epochs (passes over each step's episodes)",
    "rl.kl_coef": "config.stages.<stage>.kl_coef",
    "rl.advantage_estimator": "config.stages.<stage>.advantage_estimator",
    "rl.temperature": "config.rollout.temperature (the sampling temperature; PPO recomputes log-probs at it)",
    "reward.plan_weight": "config.stages.<stage>.plan_weight (stage 2 weighs the plan score)",
    "sft.max_len": "config.agent.token_budget (it bounds every demonstration's length)",
    "reward.step_advantage_weight": "config.rl.step_advantage_weight (GiGPO's step-level credit is advantage "
                                    "shaping, not a reward)",
    "reward.step_gamma": "config.rl.step_gamma (GiGPO's step-level credit)",
    "reward.step_norm": "config.rl.step_norm (GiGPO's step-level credit)",
}
# Keys of an RL stage that an SFT stage has no use for: an SFT stage may leave them at their defaults only.
RL_ONLY_STAGE_KEYS = ("plan_source_path", "ppo_epochs", "plan_weight", "judge", "kl_coef", "advantage_estimator",
                      "tasks_per_step", "group_size")
# sections whose keys are defined elsewhere: the environment family (env.kwargs); the TPU scripts and the
# AOT check (tpu, aot, model.hf_config: read by `python -m pilotrl_jax.aot`)
FREE_FORM = ("env.kwargs", "tpu", "aot", "model.hf_config")


def _stage(kind="rl", trained_spans="action", plan_source="policy", steps=10, lr=1e-6, plan_weight=0.0,
           kl_coef=0.0, advantage_estimator="grpo", replan="", mode="", tasks_per_step=0, group_size=0,
           ppo_epochs=1, init_from="previous", plan_source_path="", judge="", eval_modes=""):
    return ml_collections.ConfigDict(dict(
        kind=kind,
        trained_spans=trained_spans,  # comma-separated subset of plan,action
        plan_source=plan_source,  # expert | policy | http | checkpoint (stage 1: who writes the plan)
        plan_source_path=plan_source_path,  # checkpoint dir (checkpoint) or base URL (http)
        steps=steps,  # training steps (rollout + update) in this stage
        lr=lr,
        ppo_epochs=ppo_epochs,
        plan_weight=plan_weight,  # weight of the plan-quality score in the reward (stage 2)
        judge=judge,  # "" = the global judge.kind
        kl_coef=kl_coef,
        advantage_estimator=advantage_estimator,
        replan=replan,  # "" = agent.replan
        mode=mode,  # "" = agent.mode
        tasks_per_step=tasks_per_step,  # 0 = rollout.tasks_per_step
        group_size=group_size,  # 0 = rollout.group_size
        init_from=init_from,  # previous (the previous stage's final checkpoint) | base (the base model)
        eval_modes=eval_modes,  # agent modes of this stage's held-out evaluation ("" = eval.modes)
    ))


def base_config() -> ml_collections.ConfigDict:
    """Defaults for every run (paper values where the paper gives them)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(
        source="tiny",  # tiny (random init, project tokenizer) | hf (HF directory) | checkpoint (ours)
        path="",
        hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
        dtype="float32", param_dtype="float32", scan_layers=False, remat_policy="none",
        attention_query_chunk=128,  # queries per causal attention block in training/scoring (0 = full matrix)
        # attention kernel in training/scoring (no KV cache): xla (the blocked einsum: default, any backend)
        # | splash (Pallas, TPU) | cudnn (cuDNN flash, GPU) | auto (tpu -> splash, gpu -> cudnn, cpu -> xla)
        attention_impl="xla",
        tie_word_embeddings=False,  # tiny models: one matrix embeds and unembeds tokens
    ))
    c.tokenizer = ml_collections.ConfigDict(dict(
        path="",  # "" = the model's directory (hf/checkpoint) or built from environment text (tiny)
        vocab_size=768,  # for a built tokenizer
        corpus_tasks=48,  # train tasks whose expert episodes make the tokenizer corpus
        # False: the corpus holds the expert's commands only; True: its executor turns as written
        # (thought + action, agent.thought_style), so the words every turn repeats merge into whole tokens
        executor_turns=False,
    ))
    c.env = ml_collections.ConfigDict(dict(
        name="alfworld",
        num_train_tasks=200,
        num_eval_tasks=50,
        num_rl_tasks=0,  # alfworld: RL stages draw from this many tasks in rooms neither the train (SFT) nor
        # the held-out tasks have; 0 = RL draws from the train tasks
        train_split="train",
        eval_split="heldout",
        task_types="",  # comma-separated subset (alfworld), "" = all
        room_size="full",  # alfworld generator: "full" or "small" rooms (envs.alfworld_rooms.SMALL_ROOMS)
        train_layouts=0,  # alfworld: room layouts the train tasks are spread over; 0 = one per few tasks
        # (6, "few" rooms 3); k > 0 fits more train tasks in k layouts (held-out unchanged when k = default)
        isolate=False,  # each env in its own process (needed for parallel JVM envs)
        kwargs=ml_collections.ConfigDict(),  # family-specific make_env kwargs
    ))
    c.agent = ml_collections.ConfigDict(dict(
        mode="adaplan", replan="every_step", max_turns=30, max_plan_tokens=256, max_action_tokens=128,
        token_budget=16384, show_admissible=False, max_format_errors=0,  # 0 = no limit
        prompt_style="full",  # full | compact (short instructions for tiny models trained from scratch)
        # how the expert's demonstrated thought cites the plan: full ("According to Step 2 of the global
        # plan, I should go to desk 1.", the paper's) | short ("Step 2."; ~half the tokens a turn)
        thought_style="full",
        # a worked example episode in every rollout's system prompt (evaluation, RL, SFT demonstrations):
        # "" = none | "expert" = one complete expert episode on a train task (never a held-out one), in the
        # format the agent must write; for zero-shot use of small instruct models (built once per mode)
        exemplar="",
    ))
    c.rollout = ml_collections.ConfigDict(dict(
        tasks_per_step=256, group_size=16, temperature=1.0, top_p=1.0, top_k=0,
        max_batch=0,  # sampler rows; 0 = tasks_per_step * group_size
        num_cohorts=2, env_threads=0,  # 0 = auto (1 for in-process engines, else one per episode)
        # 0: the RL stages' randomness (rollout sampling, PPO's mini-batch order) derives from `seed`
        # alone; another value re-draws it while the tasks, the warm start and each step's tasks stay
        # the same, so repeated RL runs from one warm start measure RL's own run-to-run spread
        rl_seed_offset=0,
        # a PPO batch is padded to the next power of two of its longest episode (0), or to a multiple of
        # k tokens (e.g. 128: rows of 700 tokens train at 768, not 1024; one compile per length seen)
        pad_multiple=0,
        # GiB per device the memory plan (pilotrl_jax.train.memory_plan) checks RL stages against at start-up:
        # 0 = 90% of what the device reports (none on CPU: no check); > 0 = this many; < 0 = no check
        memory_budget_gib=0.0,
        # the sampler pre-fills a token prefix fresh episodes share (the system prompt; a group's whole
        # prompt) once and copies its keys/values into their rows: the same tokens, log-probs equal to
        # float rounding (~1e-5 on SmolLM2; the prefix runs in another batch shape); False = per row
        share_prefix=True,
        # sampler shapes: cache windows above 256 slots in 2 sizes per octave, prefill chunks in 4 (half the
        # padded prefill of powers of two; a few more compiles); False = powers of two
        fine_buckets=True,
        # the sampler's KV cache: "dense" (one max_len row per episode) | "paged" (pages of page_size tokens
        # allocated as episodes grow, admission by free pages, preemption + recompute when the pool runs dry;
        # sampling.paged; needs share_prefix=False)
        kv_cache="dense",
        page_size=16,  # kv_cache="paged": token slots per page
        # kv_cache="paged": pages in the pool; 0 = the memory of a dense cache of the engine's rows
        # (max_batch, or the memory plan's rows: rows x ceil(token_budget / page_size), what the memory plan
        # budgets), holding up to all of a host's episodes of a step at once (admitted by free pages); the memory
        # plan counts that dense cache, not cache_pages: a larger pool is not planned
        cache_pages=0,
        # kv_cache="paged": tokens an episode is expected to reach; the engine admits a new episode when its
        # reserve fits after every live one's (0 = token_budget: never overcommits, never preempts)
        page_reserve_tokens=0,
        # kv_cache="paged": xla (pages gathered per layer and step) | window (gathered once per turn into a
        # dense sub-cache: the dense engine's step speed, a transient sub-cache) | ragged (Pallas TPU kernel)
        # | auto (ragged on TPU, xla on GPU, window on CPU)
        paged_attention_impl="auto",
    ))
    # rl / reward: PPOConfig's and RewardConfig's fields, less those each stage (or the rollout) sets
    ppo = {k: v for k, v in dataclasses.asdict(PPOConfig()).items() if f"rl.{k}" not in MOVED_KEYS}
    c.rl = ml_collections.ConfigDict(ppo)
    c.reward = ml_collections.ConfigDict({k: v for k, v in dataclasses.asdict(RewardConfig()).items()
                                          if f"reward.{k}" not in MOVED_KEYS})
    c.judge = ml_collections.ConfigDict(dict(
        kind="grounded", base_url="", model="", api_key_env="", timeout=60.0, concurrency=8, checkpoint="",
        max_units=8, max_retries=4, backoff=1.0,
        # seconds one training step's HTTP judging may take in all (size it above units / concurrency x
        # latency of a healthy endpoint); units unanswered by then are failed judgements, which take their
        # group's mean plan term and count in reward/judge_failures; 0 = no deadline
        deadline=1800.0,
    ))
    c.eval = ml_collections.ConfigDict(dict(
        every=0,  # steps between evaluations inside a stage (0 = only at the end of each stage)
        num_tasks=50, temperature=0.6, top_p=0.9, modes="adaplan", group_size=1,
        stages="",  # comma-separated stages evaluated when they finish ("" = every stage of the pipeline)
    ))
    c.checkpoint = ml_collections.ConfigDict(dict(every=1, keep=3, async_save=True))
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.sft = ml_collections.ConfigDict(dict(
        batch_size=16, weight_decay=0.0, warmup_steps=0,
        max_grad_norm=1.0,  # global-norm gradient clipping (0 = none)
        length_bucket=128,  # pad each batch to its longest row, rounded up to a multiple of this (0 = all rows' max)
    ))
    c.pipeline = "stage1,stage2,stage3"
    c.stages = ml_collections.ConfigDict(dict(
        sft=_stage(kind="sft", trained_spans="plan,action", plan_source="expert", steps=100, lr=1e-3),
        stage1=_stage(trained_spans="action", plan_source="expert", steps=10),
        stage2=_stage(trained_spans="plan", plan_source="policy", steps=20, plan_weight=0.5),
        stage3=_stage(trained_spans="plan,action", plan_source="policy", steps=10),
        # joint training alone (no progression), from the warm start: the paper's ablation
        stage3_only=_stage(trained_spans="plan,action", plan_source="policy", steps=10, init_from="sft"),
    ))
    return c


def _split(s: Any) -> tuple[str, ...]:
    if isinstance(s, (tuple, list)):
        return tuple(str(x).strip() for x in s if str(x).strip())
    return tuple(x.strip() for x in str(s).split(",") if x.strip())


def pipeline(c) -> tuple[str, ...]:
    """Stage names to run, in order."""
    return _split(c.pipeline)


def eval_modes(c, name: str) -> tuple[str, ...]:
    """The agent modes stage `name` is evaluated in (stages.<name>.eval_modes, else eval.modes)."""
    return _split(c.stages[name].get("eval_modes", "") or c.eval.modes)


def evaluated_stages(c) -> tuple[str, ...]:
    """The pipeline stages whose final params get the held-out evaluation (eval.stages, "" = all)."""
    chosen = _split(c.eval.get("stages", ""))
    return tuple(n for n in pipeline(c) if not chosen or n in chosen)


def _check_modes(value, where: str) -> None:
    for mode in _split(value):
        if mode not in prompts.AGENT_MODES:
            raise ValueError(f"{where} has {mode!r}; expected a subset of {prompts.AGENT_MODES}")


def _unknown_keys(c, ref, prefix: str) -> list[str]:
    """Dotted paths of keys in ConfigDict `c` that `ref` lacks (free-form sections skipped)."""
    out = []
    for k in c.keys():
        path = f"{prefix}{k}"
        if path in FREE_FORM:
            continue
        if path.startswith("stages."):
            continue  # stage sections are checked against the stage template
        if k not in ref:
            out.append(path)
        elif isinstance(c[k], ml_collections.ConfigDict) and isinstance(ref[k], ml_collections.ConfigDict):
            out += _unknown_keys(c[k], ref[k], path + ".")
    return out


def _refuse_unknown(path: str, known) -> None:
    import difflib

    if path in MOVED_KEYS:
        raise ValueError(f"config.{path} is not a key: the setting lives in {MOVED_KEYS[path]}; set it there")
    close = difflib.get_close_matches(path.rsplit(".", 1)[-1], list(known), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"config.{path} is not a key and would be ignored{hint} (the documented keys are in "
                     "pilotrl_jax/train/config.py base_config)")


def check_keys(c) -> None:
    """Refuse any key the base config does not define (a key either takes effect or is refused by name)."""
    ref = base_config()
    for path in _unknown_keys(c, ref, ""):
        parent = ref
        for part in path.split(".")[:-1]:
            parent = parent[part]
        _refuse_unknown(path, parent.keys())
    template = _stage()
    for name in c.get("stages", {}).keys():
        s = c.stages[name]
        for k in s.keys():
            if k not in template:
                _refuse_unknown(f"stages.{name}.{k}", template.keys())
        if s.get("kind") == "sft":
            for k in RL_ONLY_STAGE_KEYS:
                if k in s and s[k] != template[k]:
                    raise ValueError(f"config.stages.{name}.{k}={s[k]!r} would be ignored: stage {name!r} is an SFT "
                                     f"stage; leave it at {template[k]!r} (it is for RL stages)")


PAGED_KEYS = {"page_size": 16, "cache_pages": 0, "page_reserve_tokens": 0, "paged_attention_impl": "auto"}


def _check_kv_cache(r, budget: int) -> None:
    """Refuse a bad rollout.kv_cache setting, or a paged-cache key that would be ignored, by name."""
    kind = r.get("kv_cache", "dense")
    if kind not in ("dense", "paged"):
        raise ValueError(f"config.rollout.kv_cache={kind!r}; expected 'dense' or 'paged'")
    if kind == "dense":
        changed = sorted(k for k, v in PAGED_KEYS.items() if r.get(k, v) != v)
        if changed:
            raise ValueError(f"config.rollout.{changed[0]}={r.get(changed[0])!r} would be ignored: it is for "
                             "rollout.kv_cache='paged'; set kv_cache='paged' or leave it at "
                             f"{PAGED_KEYS[changed[0]]!r}")
        return
    for k in ("page_size", "cache_pages", "page_reserve_tokens"):
        v = r.get(k, PAGED_KEYS[k])
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if k == "page_size" else 0):
            raise ValueError(f"config.rollout.{k}={v!r}; expected an int >= {1 if k == 'page_size' else 0}")
    if r.get("page_reserve_tokens", 0) > budget:
        raise ValueError(f"config.rollout.page_reserve_tokens={r.page_reserve_tokens} is above agent.token_budget="
                         f"{budget}; expected 0 (= token_budget) .. token_budget")
    impl = r.get("paged_attention_impl", "auto")
    if impl not in ("xla", "window", "ragged", "auto"):
        raise ValueError(f"config.rollout.paged_attention_impl={impl!r}; expected 'xla', 'window', 'ragged' or "
                         "'auto'")
    if r.get("share_prefix", True):
        raise ValueError("config.rollout.share_prefix=True does not work with rollout.kv_cache='paged'; set "
                         "rollout.share_prefix=False (or kv_cache='dense')")


def validate(c) -> None:
    """Raise a ValueError naming the first bad key and what it accepts."""
    check_keys(c)
    names = pipeline(c)
    if not names:
        raise ValueError("config.pipeline is empty; expected e.g. 'sft,stage1,stage2,stage3'")
    for n in _split(c.eval.get("stages", "")):
        if n not in names:
            raise ValueError(f"config.eval.stages names {n!r}, which is not in config.pipeline {names}; "
                             "list pipeline stages, or '' for all")
    for n in names:
        if n not in c.stages:
            raise ValueError(f"config.pipeline names stage {n!r}; defined stages are {sorted(c.stages.keys())}")
    if c.model.source not in MODEL_SOURCES:
        raise ValueError(f"config.model.source={c.model.source!r}; expected one of {MODEL_SOURCES}")
    if c.model.source != "tiny" and not c.model.path:
        raise ValueError(f"config.model.source={c.model.source!r} needs config.model.path (a model directory)")
    if c.judge.kind not in JUDGES:
        raise ValueError(f"config.judge.kind={c.judge.kind!r}; expected one of {JUDGES}")
    off = c.rollout.get("rl_seed_offset", 0)
    if not isinstance(off, int) or isinstance(off, bool) or off < 0:
        raise ValueError(f"config.rollout.rl_seed_offset={off!r}; expected an int >= 0 (0 = derive the RL "
                         "randomness from config.seed alone)")
    pm = c.rollout.get("pad_multiple", 0)
    if not isinstance(pm, int) or isinstance(pm, bool) or pm < 0:
        raise ValueError(f"config.rollout.pad_multiple={pm!r}; expected 0 (pad PPO batches to a power of two) "
                         "or a positive int k (pad to a multiple of k, e.g. 128)")
    _check_kv_cache(c.rollout, int(c.agent.token_budget))
    n_rl = int(c.env.get("num_rl_tasks", 0))
    if n_rl < 0 or (n_rl and c.env.name != "alfworld"):
        raise ValueError(f"config.env.num_rl_tasks={n_rl} (env {c.env.name!r}); expected 0, or > 0 with "
                         "env.name='alfworld' (a pool of RL tasks in generated rooms)")
    tl = int(c.env.get("train_layouts", 0))  # (ml_collections keeps the field an int)
    if tl < 0 or (tl and c.env.name != "alfworld"):
        raise ValueError(f"config.env.train_layouts={tl!r} (env {c.env.name!r}); expected 0 (the generator's "
                         "default), or a positive int with env.name='alfworld'")
    prompts.check_mode(c.agent.mode, c.agent.replan)
    if c.agent.get("thought_style", "full") not in THOUGHT_STYLES:
        raise ValueError(f"config.agent.thought_style={c.agent.thought_style!r}; expected 'full' (the paper's "
                         "'According to Step 2 of the global plan, I should ...') or 'short' ('Step 2.')")
    prompts.check_exemplar(c.agent.get("exemplar", ""))
    _check_modes(c.eval.modes, "config.eval.modes")
    for n in names:
        s = c.stages[n]
        where = f"config.stages.{n}"
        if s.kind not in STAGE_KINDS:
            raise ValueError(f"{where}.kind={s.kind!r}; expected one of {STAGE_KINDS}")
        spans = _split(s.trained_spans)
        bad = [x for x in spans if x not in TRAINABLE]
        if bad or not spans:
            raise ValueError(f"{where}.trained_spans={s.trained_spans!r} has {bad or 'nothing'}; "
                             f"expected a non-empty subset of {set(TRAINABLE)}")
        if s.plan_source not in PLAN_SOURCES:
            raise ValueError(f"{where}.plan_source={s.plan_source!r}; expected one of {PLAN_SOURCES}")
        if s.plan_source in ("http", "checkpoint") and not s.plan_source_path:
            raise ValueError(f"{where}.plan_source={s.plan_source!r} needs {where}.plan_source_path")
        if s.plan_source != "policy" and "plan" in spans and s.kind == "rl":
            raise ValueError(f"{where} trains 'plan' spans but plan_source={s.plan_source!r} writes the plan; "
                             "use plan_source='policy' (stages 2-3) or trained_spans='action' (stage 1)")
        earlier = names[: names.index(n)]
        if s.init_from not in INIT_FROM and s.init_from not in earlier:
            raise ValueError(f"{where}.init_from={s.init_from!r}; expected one of {INIT_FROM} or an earlier stage "
                             f"of the pipeline {list(earlier)}")
        if s.steps < 0:
            raise ValueError(f"{where}.steps={s.steps}; expected >= 0")
        if s.judge and s.judge not in JUDGES:
            raise ValueError(f"{where}.judge={s.judge!r}; expected one of {JUDGES} or ''")
        _check_modes(s.get("eval_modes", ""), f"{where}.eval_modes")
        modes = _split(s.mode or c.agent.mode)
        if len(modes) > 1 and s.kind != "sft":
            raise ValueError(f"{where}.mode={s.mode!r}; several modes are for SFT demonstrations only")
        for mode in modes:
            prompts.check_mode(mode, (s.replan or c.agent.replan) if mode == "adaplan" else None)
        resolve_stage(c, n)  # typed settings validate themselves (PPOConfig, RewardConfig)


@dataclasses.dataclass(frozen=True)
class StageSettings:
    """A stage with the global defaults folded in, as typed objects."""

    name: str
    kind: str
    trained_spans: tuple[str, ...]
    plan_source: str
    plan_source_path: str
    steps: int
    mode: str
    replan: Any
    tasks_per_step: int
    group_size: int
    judge: str
    init_from: str
    ppo: PPOConfig
    reward: RewardConfig


def resolve_stage(c, name: str) -> StageSettings:
    """Fold global sections and the stage's own keys into typed settings."""
    s = c.stages[name]
    rl = dict(c.rl.to_dict())
    moved = sorted(k for k in rl if f"rl.{k}" in MOVED_KEYS)
    if moved:
        _refuse_unknown(f"rl.{moved[0]}", ())
    rl.update(lr=float(s.lr), epochs=int(s.ppo_epochs), kl_coef=float(s.kl_coef),
              advantage_estimator=s.advantage_estimator, temperature=float(c.rollout.temperature))
    if rl["advantage_estimator"] == "gae":  # GAE needs values; rl.use_critic=True trains a critic for grpo/rloo too
        rl["use_critic"] = True
    if str(rl.get("grpo_std")).lower() in ("none", ""):  # Dr. GRPO: group mean only (a string on the command line)
        rl["grpo_std"] = None
    fields = {f.name for f in dataclasses.fields(PPOConfig)}
    unknown = sorted(set(rl) - fields)
    if unknown:
        raise ValueError(f"config.rl has unknown keys {unknown}; PPOConfig takes {sorted(fields)}")
    ppo = PPOConfig(**rl)
    rw = dict(c.reward.to_dict())
    moved = sorted(k for k in rw if f"reward.{k}" in MOVED_KEYS)
    if moved:
        _refuse_unknown(f"reward.{moved[0]}", ())
    rw["plan_weight"] = float(s.plan_weight)
    reward = RewardConfig(**rw)
    mode = _split(s.mode or c.agent.mode)[0]
    replan = (s.replan or c.agent.replan) if mode == "adaplan" else None
    return StageSettings(
        name=name, kind=s.kind, trained_spans=_split(s.trained_spans), plan_source=s.plan_source,
        plan_source_path=s.plan_source_path, steps=int(s.steps), mode=mode, replan=replan,
        tasks_per_step=int(s.tasks_per_step or c.rollout.tasks_per_step),
        group_size=int(s.group_size or c.rollout.group_size), judge=s.judge or c.judge.kind,
        init_from=s.init_from, ppo=ppo, reward=reward,
    )
