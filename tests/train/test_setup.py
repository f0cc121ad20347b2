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
