# Two commands set everything up on a fresh machine:
#   make demo   -> creates .venv, installs psaguard, runs the demo on an embedded tiny model (no downloads)
#   make test   -> creates .venv, installs psaguard with its dev extras, runs the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned so pip takes the local CPU wheel instead of a multi-GB CUDA build.
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint install

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	echo "$(TORCH)" > $(VENV)/constraints.txt
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/psaguard demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests; \
	status=$$?; if [ $$status -eq 5 ]; then echo "no tests were collected"; exit 1; fi; exit $$status

lint: $(STAMP)
	$(BIN)/ruff check guard adapters training tests examples
