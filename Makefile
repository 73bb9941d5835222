# One entry point for people and CI. `make test` builds .venv from nothing and runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup lock test test-fast lint serve quickstart bench-train bench-export gpu-wheels gpu-check clean labelstudio

setup: $(STAMP)

# Every package from the lock, each checked against its sha256 (requirements-dev.lock: the
# runtime's requirements.lock plus the test and lint tools); then s4seg itself, editable.
$(STAMP): pyproject.toml requirements-dev.lock numpy2.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	# numpy 2 beside the serving stack's numpy<2: tests/test_doctor.py runs training on it.
	$(BIN)/pip install --quiet --require-hashes --no-deps --upgrade --target $(VENV)/numpy2 \
		-r numpy2.lock
	touch $(STAMP)

# Refresh the locks from pyproject.toml's ranges (pip-tools in a throwaway venv; minutes: it
# downloads what it hashes). Commit the three files together.
PIP_COMPILE = .lock-tools/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	--strip-extras --no-emit-index-url --no-emit-find-links
lock:
	test -x .lock-tools/bin/pip-compile || ($(PYTHON) -m venv .lock-tools \
		&& .lock-tools/bin/pip install --quiet 'pip-tools==7.6.2')
	$(PIP_COMPILE) --upgrade -o requirements.lock pyproject.toml
	$(PIP_COMPILE) --upgrade --extra dev -o requirements-dev.lock pyproject.toml
	printf 'numpy>=2,<3\n' | $(PIP_COMPILE) --upgrade -o numpy2.lock -
	printf 'label-studio==1.23.2\n' | $(PIP_COMPILE) -o labelstudio.lock -

# Label Studio itself, for the labeling round trip (docs/labeling.md) and its test: a server of
# its own (Django, numpy 2; about 1 GB), so in a virtual environment of its own.
LS_VENV := .venv-labelstudio
labelstudio: $(LS_VENV)/.installed
$(LS_VENV)/.installed: labelstudio.lock
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --quiet --require-hashes --no-deps -r labelstudio.lock
	touch $@

# Lint: ruff's rules, its formatter (check only) and mypy on the core, serving and clients.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/typecheck.py

test: setup lint
	$(BIN)/pytest

# Before a commit: the contracts and units that need no tritonserver, no browser and no training
# (tests/conftest.py marks the others), in under 2 minutes. CI runs everything (make test).
test-fast: setup
	$(BIN)/pytest -q -m "not stack and not trains and not slow"

# The main job: serve segmentation on http://127.0.0.1:8080. On the first run, when nothing is
# published yet, `s4seg serve` runs `s4seg quickstart` (synthetic data, s4GAN + MLMT, export,
# publish: a few minutes on a CPU); later runs reuse the published version.
serve: setup
	$(BIN)/s4seg serve

quickstart: setup
	$(BIN)/s4seg quickstart

bench-train: setup
	$(BIN)/s4seg bench train --write BENCHMARKS.md

bench-export: setup
	$(BIN)/s4seg bench export --write BENCHMARKS.md

# A bare GPU machine (no registry) lacks pydantic and timm: carry their wheels in .gpu-wheels/
# (ignored). timm and safetensors without their dependencies (torch is the machine's own; timm
# imports the Hugging Face hub only if it is there), at the lock's versions.
GPU_PYTHON_VERSION ?= 3.12
GPU_PLATFORMS = --only-binary=:all: --python-version $(GPU_PYTHON_VERSION) \
	--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .gpu-wheels
gpu-wheels: setup
	$(BIN)/pip download --quiet $(GPU_PLATFORMS) 'pydantic>=2.6'
	$(BIN)/pip download --quiet --no-deps $(GPU_PLATFORMS) \
		$$(grep -E '^(timm|safetensors)==' requirements.lock | cut -d' ' -f1)

# On the GPU machine: doctor + bench train + loader check (scripts/gpu-check.sh says what).
gpu-check:
	bash scripts/gpu-check.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
