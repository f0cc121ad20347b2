"""Shared fixtures for model tests: random tiny HF LLaMA checkpoints written by transformers."""
import pytest
import torch
import transformers


def make_hf_model(tmp_path, name="m", seed=0, **kw):
    """Build a random transformers LlamaForCausalLM, save it (safetensors) and return (model, dir)."""
    base = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=12, max_position_embeddings=256,
                rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    base.update(kw)
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(**base)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # break symmetry of the norms so a wrong norm mapping shows
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / name
    model.save_pretrained(path)
    return model, str(path)


@pytest.fixture
def hf_factory(tmp_path):
    """Factory fixture: hf_factory(**config) -> (torch model, directory)."""
    counter = {"i": 0}

    def make(**kw):
        counter["i"] += 1
        return make_hf_model(tmp_path, name=f"m{counter['i']}", seed=counter["i"], **kw)

    return make
