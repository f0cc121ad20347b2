"""Helpers shared by the benchmark scripts (run as `python benchmarks/<script>.py`)."""
import tempfile

import torch
import transformers


def model_dir(name: str) -> str:
    """An HF model directory: SmolLM2-135M (converted once) or a small random LLaMA ("tiny")."""
    if name == "smollm2":
        from pilotrl_jax.models.smollm2 import ensure_smollm2_hf

        return ensure_smollm2_hf()
    d = tempfile.mkdtemp()
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    return d
