# The README's commands. `make demo` runs the main job; `make test` runs the test suite.
# Everything installs into .venv from the pins in constraints.txt; nothing is needed beforehand.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.edge_ad-installed
KERNEL_SOURCES := $(wildcard kernels/*) CMakeLists.txt pyproject.toml constraints.txt

.PHONY: demo test test-all bench gpu-check mutate install clean

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# The dev install: everything the package index has (`all`: onnxruntime-gpu, torch, Triton client) and
# the test tools, as an editable install: Python code is read from the tree, and edge_ad._kernels is
# rebuilt when kernels/ changes. --no-build-isolation reuses the build tools installed here (quicker
# rebuilds); a user's `pip install .` builds in isolation (tests/test_install.py checks that path).
# A venv made before the base install switched to opencv-python-headless has opencv-python: both
# wheels own the module cv2, so the old one goes first (and the headless one is reinstalled whole).
$(STAMP): $(VENV)/bin/python $(KERNEL_SOURCES)
	if $(PIP) show -q opencv-python 2>/dev/null; then $(PIP) uninstall -q -y opencv-python opencv-python-headless; fi
	$(PIP) install -q -c constraints.txt scikit-build-core pybind11
	$(PIP) install -q -c constraints.txt --no-build-isolation -e ".[all,test]"
	$(PY) -c "import edge_ad._kernels as k; print('edge_ad._kernels built, has_cuda =', k.has_cuda)"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m edge_ad.cli demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow" tests

test-all: $(STAMP)
	$(PY) -m pytest tests

bench: $(STAMP)
	$(PY) benchmarks/kernels.py --json benchmarks/results/kernels-cpu.json

# Mutation testing of the decision-critical modules in a private copy of the tree (long; not in CI).
mutate: $(STAMP)
	$(PY) tests/mutate.py --json runs/mutants.json

# On a CUDA machine, with that machine's own python3 and torch (no .venv, no network): builds the kernels
# for the local GPU, runs `pytest -m gpu`, times kernels and models; JSON + logs into GPU_CHECK_OUT.
GPU_CHECK_OUT ?= benchmarks/results
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py --build --out $(GPU_CHECK_OUT)

clean:
	rm -rf build runs .pytest_cache
