# One entry point for people and CI. `make test` builds .venv from nothing and runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data/synth
RUN ?= runs/synthetic-quick

.PHONY: setup test lint quickstart bench-train clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/pytest

# The demo: synthetic data, a quick CPU baseline, its evaluation with pictures. Reruns reuse
# what exists (the run resumes from its last checkpoint and stops at once when it is complete).
quickstart: setup
	test -f $(DATA)/classes.yaml || $(BIN)/s4seg data synth --out $(DATA)
	$(BIN)/s4seg train baseline --config synthetic-quick --set data.root=$(DATA) \
		--set train.out_dir=$(RUN) --resume auto
	$(BIN)/s4seg evaluate --segmenter $(RUN)/last.pt --out $(RUN)/eval --save-predictions 8

bench-train: setup
	$(BIN)/s4seg bench train --write BENCHMARKS.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
