"""Helpers shared by the benchmark scripts (run as `python benchmarks/<script>.py`)."""
import tempfile

import torch
import transformers


def model_dir(name: str) -> str:
    """An HF model directory: SmolLM2-135M (converted once), or a random LLaMA: "tiny" (4 layers, hidden
    256) or "demo" (configs/demo.py's model: 2 layers, hidden 128, vocabulary 1024)."""
    if name == "smollm2":
        from pilotrl_jax.models.smollm2 import ensure_smollm2_hf

        return ensure_smollm2_hf()
    d = tempfile.mkdtemp()
    torch.manual_seed(0)
    if name == "demo":
        cfg = transformers.LlamaConfig(vocab_size=1024, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    else:
        cfg = transformers.LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                       num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    return d
