"""Test setup: 8 fake CPU devices (for mesh tests) before jax is imported, fp32 matmuls."""
import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
# XLA's CPU backend spends most of the suite's time compiling (238 of 333 s in tests/rl + tests/sampling):
# LLVM without its optimization passes cuts that to 147 s. The HLO passes (fusion, layouts) are unchanged
# and so are the results (the SmolLM2 pipeline's rewards agree to the digit); only the machine code is
# slower. The SmolLM2 pipeline test, which runs a real model at length, drops the flag in its subprocess.
_FAST_COMPILE = "--xla_backend_optimization_level=0"
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " " + _FAST_COMPILE
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
