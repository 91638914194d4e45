# Every target creates .venv if missing and installs the project (with its compiled
# kernels) there; each step re-runs only when its inputs changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALL_STAMP := $(VENV)/.install-stamp
BUILD_STAMP := $(VENV)/.build-stamp
KERNEL_SOURCES := $(wildcard nudgeserve/kernels/*.pyx nudgeserve/kernels/*.pxd)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test bench install lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Build requirements go in first so the editable install can skip build isolation
# (which would download Cython and NumPy again on every change).
$(INSTALL_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q "setuptools>=68" wheel "cython>=3.0" "numpy>=1.26,<3"
	$(PY) -m pip install -q --no-build-isolation -e '.[dev]'
	touch $@

$(BUILD_STAMP): $(INSTALL_STAMP) setup.py $(KERNEL_SOURCES)
	$(PY) setup.py -q build_ext --inplace
	touch $@

install: $(BUILD_STAMP)

run: install
	$(VENV)/bin/nudgeserve run --host $(HOST) --port $(PORT)

test: install
	$(PY) -m pytest

bench: install
	$(PY) -m benchmarks.kernels

lint: install
	$(VENV)/bin/ruff check nudgeserve benchmarks tests

clean:
	rm -rf build nudgeserve/kernels/*.so nudgeserve/kernels/_*.c $(BUILD_STAMP)
