"""Shared fixtures for reward tests: a small tokenizer and scripted AgentEpisodes."""
import pytest

from pilotrl_jax.agent.tokenizer import build_word_tokenizer

ENV_TEXT = [
    "You are in the middle of a room. Looking quickly around you, you see a desk 1, a drawer 1, a shelf 1.",
    "Your task is to: put a pen on the shelf.",
    "On the desk 1, you see a pen 1 and a book 1.",
    "You pick up the pen 1 from the desk 1.",
    "You move the pen 1 to the shelf 1.",
    "Nothing happens.",
    "go to desk 1", "take pen 1 from desk 1", "move pen 1 to shelf 1", "look", "inventory",
    '{"correctness": 4, "followability": 5, "standardization": 3}',
]


@pytest.fixture(scope="session")
def tok():
    return build_word_tokenizer(ENV_TEXT * 20, vocab_size=600)


@pytest.fixture(scope="module")
def fake_server():
    """(state, base_url) of a misbehaving OpenAI-compatible server on 127.0.0.1; state reset per use."""
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location(
        "rewards_fake_openai", os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_openai.py"))
    fake_openai = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake_openai)
    state, url, stop = fake_openai.start()
    yield state, url
    stop()


@pytest.fixture
def server(fake_server):
    state, url = fake_server
    state.reset()
    return state, url
