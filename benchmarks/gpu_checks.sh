#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, as one script (under 10 minutes on one H200): versions, the GPU parity
# tests (tests/models/test_attention_gpu.py: cuDNN flash and xla_flash against the xla path), then the PPO-step
# table (benchmarks/bench_ppo_step_gpu.py: a 1.24B LLaMA, bf16, 8K-token rows, ours per attention kernel vs
# torch). Runs with the machine's own python3 (JAX with CUDA, torch, transformers, flax, optax installed);
# writes its logs to $OUT (or ./gpu_out). The tests compile without GEMM autotuning (numbers, not speed:
# the first test alone took 102 s with it on 2026-12-04).
#     [TEST_LIMIT=200] [BENCH_LIMIT=360] bash benchmarks/gpu_checks.sh [extra bench_ppo_step_gpu.py arguments]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_out}"
mkdir -p "$out"
export JAX_PLATFORMS=cuda PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import sys, jax, jaxlib, flax, optax, torch, transformers; print(sys.version.split()[0], 'jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__); print(jax.devices())"
} 2>&1 | tee "$out/versions.txt"
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0" timeout "${TEST_LIMIT:-200}" python3 -m pytest -q -p no:cacheprovider -ra tests/models/test_attention_gpu.py 2>&1 | tee "$out/gpu_tests.txt"
timeout "${BENCH_LIMIT:-360}" python3 benchmarks/bench_ppo_step_gpu.py "$@" 2>&1 | tee "$out/bench_ppo_step_gpu.txt"
