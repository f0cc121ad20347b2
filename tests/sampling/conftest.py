"""Fixtures for sampler tests: a random tiny transformers LLaMA (+ our params) and a toy tokenizer."""
import numpy as np
import pytest
import torch
import transformers

from pilotrl_jax.models import hf_io


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """(torch model, our config, our params) of one random tiny LLaMA checkpoint."""
    cfg = transformers.LlamaConfig(
        vocab_size=101, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=12, max_position_embeddings=512, initializer_range=0.15,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    path = tmp_path_factory.mktemp("tiny") / "m"
    model.save_pretrained(path)
    config, params = hf_io.load_hf(str(path))
    return model, config, params


class ToyTokenizer:
    """Each id decodes to a fixed random 1-3 letter piece, so strings span token boundaries arbitrarily."""

    def __init__(self, vocab_size: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        letters = list("abcdefgh<>/")
        self.pieces = ["".join(rng.choice(letters, size=rng.integers(1, 4))) for _ in range(vocab_size)]

    def __len__(self):
        return len(self.pieces)

    def decode(self, ids, **kw):
        """Concatenate the pieces of `ids`."""
        return "".join(self.pieces[int(i)] for i in ids)


@pytest.fixture(scope="module")
def toy_tokenizer(tiny_hf):
    """A ToyTokenizer over the tiny model's vocabulary."""
    return ToyTokenizer(tiny_hf[1].vocab_size)
