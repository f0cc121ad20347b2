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
