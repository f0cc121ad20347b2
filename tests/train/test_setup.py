"""Run setup pieces: the tokenizer corpus keeps every ALFWorld name one token."""
import pytest

pytest.importorskip("alfworld")

from pilotrl_jax.agent.tokenizer import build_word_tokenizer  # noqa: E402
from pilotrl_jax.envs.alfworld_env import AlfWorldEnv  # noqa: E402
from pilotrl_jax.envs.alfworld_gen import generate_tasks, vocabulary  # noqa: E402
from pilotrl_jax.train.setup import env_vocabulary_corpus, expert_corpus  # noqa: E402


def test_alfworld_names_are_single_tokens_with_the_vocabulary_corpus(tmp_path):
    tasks = generate_tasks(str(tmp_path), 6, 2, seed=0, room_size="small")["train"]
    corpus = expert_corpus(lambda: AlfWorldEnv(expert="search"), tasks, "alfworld")
    assert any(line.startswith("Find the ") for line in corpus)  # the search expert's plan steps
    split = lambda tok: [n for n in vocabulary() if len(tok.encode(" " + n)) > 1]  # noqa: E731
    plain = build_word_tokenizer(corpus, vocab_size=1024)
    boosted = build_word_tokenizer(corpus + env_vocabulary_corpus("alfworld"), vocab_size=1024)
    assert len(split(plain)) > 10  # rare names fall apart into letters without it
    assert split(boosted) == []
    assert {"apple", "desklamp", "sidetable", "creditcard"} <= set(vocabulary())
    assert env_vocabulary_corpus("tiny") == []


def test_the_tokenizer_corpus_holds_the_executor_turns_the_expert_writes(tmp_path):
    """The expert's executor turns (thought + action, in the configured thought style) are in the
    corpus, so the words the policy writes every turn merge into whole tokens."""
    tasks = generate_tasks(str(tmp_path), 4, 2, seed=0, room_size="few")["train"]
    full = expert_corpus(lambda: AlfWorldEnv(expert="search"), tasks, "alfworld")
    short = expert_corpus(lambda: AlfWorldEnv(expert="search"), tasks, "alfworld", thought="short")
    turns = [t for t in full if t.startswith("<thought>According to Step ")]
    assert turns and all(t.endswith("</action>") for t in turns)
    assert [t for t in short if t.startswith("<thought>Step ")] and not any("According" in t for t in short)
    bare = expert_corpus(lambda: AlfWorldEnv(expert="search"), tasks, "alfworld", thought=None)  # executor_turns=False
    assert not any("<thought>" in t for t in bare) and any(t.startswith("go to ") for t in bare)
    tok = build_word_tokenizer(full + env_vocabulary_corpus("alfworld"), vocab_size=1024)
    assert len(tok.encode(" should")) == 1


def test_rl_stages_draw_from_a_separate_pool_of_rooms_when_asked(tmp_path, small_demo_config):
    """env.num_rl_tasks: the RL stages' tasks come from the generator's `rl` split (rooms the SFT
    demonstrations and the held-out tasks never show); without it they are the train tasks."""
    import pytest as _pytest

    from pilotrl_jax.train import config as C
    from pilotrl_jax.train import setup as S
    from pilotrl_jax.train.trainer import step_tasks

    cfg = small_demo_config(4, 2)
    ctx = S.build_context(cfg, str(tmp_path / "a"))
    assert ctx.rl_tasks is None and ctx.rl_pool is ctx.train_tasks
    cfg.env.num_rl_tasks = 3
    C.validate(cfg)
    ctx = S.build_context(cfg, str(tmp_path / "b"))
    assert [t.split for t in ctx.rl_pool] == ["rl"] * 3 and len(ctx.train_tasks) == 4
    ids = {t.task_id for t in ctx.rl_pool}
    assert {t.task_id for t in step_tasks(ctx.rl_pool, 2, 5, 0)} <= ids
    cfg.env.name = "tiny"
    with _pytest.raises(ValueError, match="num_rl_tasks=3"):
        C.validate(cfg)


def test_train_layouts_reach_the_generator_and_are_checked(tmp_path, small_demo_config):
    """env.train_layouts: the run's train tasks are spread over exactly that many rooms (the held-out
    tasks stay those of the default); bad values are refused by name."""
    from pilotrl_jax.train import config as C
    from pilotrl_jax.train import setup as S

    cfg = small_demo_config(6, 2)
    default = S.load_splits(cfg, str(tmp_path / "a"))
    cfg.env.num_train_tasks, cfg.env.train_layouts = 12, 2
    C.validate(cfg)
    assert S.env_task_kwargs(cfg, str(tmp_path / "b"))["train_layouts"] == 2
    train, held = S.load_splits(cfg, str(tmp_path / "b"))
    assert len(train) == 12 and len({t.payload["layout"] for t in train}) == 2
    assert [t.payload["goal"] for t in held] == [t.payload["goal"] for t in default[1]]
    cfg.env.train_layouts = -1  # (ml_collections itself refuses a float or a bool for this int field)
    with pytest.raises(ValueError, match="config.env.train_layouts=-1"):
        C.validate(cfg)
    cfg.env.train_layouts, cfg.env.name = 2, "tiny"
    with pytest.raises(ValueError, match="train_layouts=2"):
        C.validate(cfg)


def test_expert_exemplar_is_a_train_episode_built_once_and_in_every_rollout_prompt(tmp_path, small_demo_config,
                                                                                   monkeypatch):
    """agent.exemplar='expert': one expert episode on a train task (never a held-out one) in the
    system prompt of every rollout of its mode, built once per (mode, replan) and cached in the context."""
    import dataclasses
    import functools

    from pilotrl_jax.agent import prompts
    from pilotrl_jax.rollout import ForcedPolicy, RolloutRunner, expert_turn
    from pilotrl_jax.train import config as C
    from pilotrl_jax.train import setup as S
    from pilotrl_jax.train.evaluation import rollout_config

    cfg = small_demo_config(4, 2)
    cfg.agent.exemplar = "few_shot"
    with pytest.raises(ValueError, match=r"config.agent.exemplar='few_shot' is unknown"):
        C.validate(cfg)
    cfg.agent.exemplar = "expert"
    C.validate(cfg)
    ctx = S.build_context(cfg, str(tmp_path))
    rc_kw = dict(group_size=1, temperature=1.0, top_p=1.0, seed=0, progress=False)
    rc = rollout_config(ctx, mode="adaplan", replan="static", **rc_kw)
    ex = rc.exemplar
    task_id, text = ctx.exemplars[("adaplan", "static")]
    assert text == ex and ex.startswith(prompts.EXEMPLAR_BEGIN) and ex.endswith(prompts.EXEMPLAR_END)
    assert task_id in {t.task_id for t in ctx.train_tasks} and task_id not in {t.task_id for t in ctx.eval_tasks}
    assert ex.count("<global_plan>") == 1 and ex.count("</action>") >= 2  # static: one plan, then turns
    assert rollout_config(ctx, mode="adaplan", replan="static", exemplar="", **rc_kw).exemplar == ""
    monkeypatch.setattr(S, "expert_exemplar", lambda *a: (_ for _ in ()).throw(AssertionError("rebuilt")))
    assert rollout_config(ctx, mode="adaplan", replan="static", **rc_kw).exemplar == ex  # cached
    monkeypatch.undo()
    react = rollout_config(ctx, mode="react", replan="static", **rc_kw).exemplar
    assert react and "<global_plan>" not in react and "global plan" not in react and "<thought>" in react
    assert ctx.exemplars[("react", None)][0] == task_id  # the fewest-turn task: the same one in every mode

    # The exemplar reaches the episodes' system prompt (a held-out task), and differs from none.
    last_action = ex[ex.rindex("<action>") + len("<action>"): ex.rindex("</action>")]
    policy = lambda: ForcedPolicy(functools.partial(expert_turn, thought="full"), max_len=1024)  # noqa: E731
    one = dataclasses.replace(rc, max_turns=1)
    with_ex = RolloutRunner(policy(), ctx.env_factory, ctx.tokenizer, one).run(ctx.eval_tasks[:1]).episodes[0]
    plain = RolloutRunner(policy(), ctx.env_factory, ctx.tokenizer, dataclasses.replace(one, exemplar="")).run(
        ctx.eval_tasks[:1]).episodes[0]
    p_ex, p_plain = with_ex.spans[0].text, plain.spans[0].text
    assert p_ex != p_plain and ex in p_ex and f"<action>{last_action}</action>" in p_ex and ex not in p_plain

    # Never from held-out tasks; a context without train tasks is refused by name.
    bare = dataclasses.replace(ctx, train_tasks=list(ctx.eval_tasks), exemplars={})
    with pytest.raises(ValueError, match="config.agent.exemplar='expert' needs the run's train tasks"):
        S.run_exemplar(bare, "adaplan", "static")
    small = dataclasses.replace(ctx, exemplars={}, cfg=cfg.copy_and_resolve_references())
    small.cfg.agent.token_budget = 300
    with pytest.raises(ValueError, match="token_budget=300"):
        S.run_exemplar(small, "adaplan", "every_step")


def test_a_chat_template_without_a_system_role_fails_at_start_up(tmp_path, small_demo_config):
    """build_context checks the run's chat template before anything runs, naming the config key."""
    from pilotrl_jax.train import setup as S

    tok = build_word_tokenizer(["go to desk 1", "take pen 1 from desk 1"] * 5, vocab_size=400)
    tok.chat_template = ("{% for m in messages %}{% if m['role'] != 'system' %}"
                         "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}"
                         "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    tok.save_pretrained(str(tmp_path / "tok"))
    cfg = small_demo_config(2, 1)
    cfg.tokenizer.path = str(tmp_path / "tok")
    with pytest.raises(ValueError, match=r"from config.tokenizer.path=.*drops the system message") as e:
        S.build_context(cfg, str(tmp_path / "run"))
    assert "--config.tokenizer.path" in str(e.value) and not (tmp_path / "run" / "base").exists()
