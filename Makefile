# Fresh machine: `make demo` (set up, then run the main job) and `make test` (set up, then the tests).
# The virtual environment sees the system's packages, so a preinstalled torch/triton (GPU images) is
# used as is; without one, torch 2.13.0 is installed (the CPU build where that is what the index has).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-triton36

$(VENV)/.ready: pyproject.toml
	python3 -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $@

setup: $(VENV)/.ready

demo: setup
	$(PY) -m runtime.demo

# OpenMP threads sleep when idle: on a CPU shared with other work, GNU OpenMP's active wait stalls the
# many small operations of the CPU execution path.
test: setup
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY) -m pytest -q

# The tests again under triton 3.6, the oldest supported (GPU images ship it), in a venv of its own:
# Triton's language differs between versions in ways its interpreter shows. `.ci/run` runs both.
VENV36 ?= .venv-triton36
$(VENV36)/.ready: pyproject.toml
	python3 -m venv $(VENV36)
	$(VENV36)/bin/python -m pip install -q "torch==2.13.0" "triton==3.6.0"
	$(VENV36)/bin/python -m pip install -q -e ".[test]"
	touch $@

test-triton36: $(VENV36)/.ready
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(VENV36)/bin/python -m pytest -q

# A lent GPU: tests on CUDA, compute-sanitizer on four calls, the quick benchmark (bench/gpu_check.py);
# results in bench/results/gpu-check-<gpu>-<date>/. Without a GPU it lists what it would run.
.PHONY: gpu-check
gpu-check: setup
	$(PY) -m bench.gpu_check
