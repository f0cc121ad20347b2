"""Shared fixtures for rollout tests: tiny tasks, a word tokenizer, a random tiny LLaMA and its engine."""
import jax
import pytest

from pilotrl_jax.agent.tokenizer import build_word_tokenizer
from pilotrl_jax.envs.tiny import TinyEnv, make_tasks
from pilotrl_jax.models import llama
from pilotrl_jax.models.config import LlamaConfig
from pilotrl_jax.rollout import SamplerPolicy
from pilotrl_jax.sampling import SamplerEngine


class RecordingPolicy(SamplerPolicy):
    """A SamplerPolicy that remembers each episode's engine tokens (by seed) when it is released."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seeds, self.released = {}, {}

    def start(self, prompts_, seeds):
        hs = super().start(prompts_, seeds)
        self.seeds.update(zip(hs, seeds))
        return hs

    def release(self, handles):
        for h in handles:
            self.released[self.seeds.pop(h)] = self.engine.tokens(h)
        super().release(handles)


@pytest.fixture(scope="session")
def recording_policy():
    """The RecordingPolicy class."""
    return RecordingPolicy


@pytest.fixture(scope="session")
def tiny_tasks():
    """Six tiny-world tasks."""
    return make_tasks("train", 6, seed=0)


@pytest.fixture(scope="session")
def tiny_tok(tiny_tasks):
    """A byte-level BPE tokenizer trained on tiny-world text."""
    env = TinyEnv()
    texts = []
    for t in tiny_tasks:
        obs, info = env.reset(t)
        texts += [obs] + info["admissible_actions"]
    return build_word_tokenizer(texts * 5, vocab_size=512)


@pytest.fixture(scope="session")
def tiny_model(tiny_tok):
    """(config, params) of a random 2-layer LLaMA over the tokenizer's vocabulary."""
    cfg = LlamaConfig.tiny(vocab_size=len(tiny_tok))
    return cfg, llama.init_params(cfg, jax.random.PRNGKey(0))


@pytest.fixture(scope="session")
def tiny_engine(tiny_model, tiny_tok):
    """One engine shared by the fast tests (so its jitted steps compile once)."""
    cfg, params = tiny_model
    return SamplerEngine(cfg, params, max_batch=8, max_len=1024, tokenizer=tiny_tok, seed=0)
