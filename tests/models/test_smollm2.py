"""A real LLaMA-family model: SmolLM2-135M-Instruct (GGUF from PyPI) through load_hf vs transformers."""
import numpy as np
import pytest
import torch
import transformers

from pilotrl_jax.models import hf_io, llama
from pilotrl_jax.models.smollm2 import ensure_smollm2_hf


@pytest.mark.slow
def test_smollm2_logits_and_greedy_tokens_match_transformers():
    path = ensure_smollm2_hf()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template([{"role": "user", "content": "Put a clean apple in the fridge."}],
                                   tokenize=False, add_generation_prompt=True)
    ids = np.asarray([tok(text).input_ids])
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor(ids)).logits.numpy()
    config, params = hf_io.load_hf(path)
    assert config.tie_word_embeddings and config.vocab_size == 49152 and config.num_layers == 30
    ours = np.asarray(llama.forward(config, params, ids))
    assert np.abs(ours - ref).max() <= 1e-3
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
