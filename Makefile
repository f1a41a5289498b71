# Two commands set everything up on a fresh machine:
#   make demo   -> creates .venv, installs psaguard, runs the demo on an embedded tiny model (no downloads)
#   make test   -> creates .venv, installs psaguard with its dev extras, runs the test suite on two workers
# Both install the exact versions CI tests (constraints.txt). `make test-slow` runs the long end-to-end tests
# (marked `slow`: the benchmark scripts, world runs); `make test-newest` runs a smoke subset
# against the newest releases in a second environment (.venv-newest); `.ci/run` runs all three.
PYTHON ?= python3
VENV := .venv
NEWEST := .venv-newest
# torch is pinned to the release CI tests. pip takes a local CPU wheel where the machine has one; elsewhere
# `torch==2.13.0` resolves the CUDA build from PyPI (several GB). For PyPI's CPU build use
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH := torch==2.13.0
TORCH_INDEX ?=
TORCH_SOURCE := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
PYTEST := HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python -m pytest -q -p no:cacheprovider
# Two workers (the machines have two cores); each test file's tests stay together on one worker.
WORKERS ?= 2
PARALLEL := -n $(WORKERS) --dist loadfile
# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
CHECK_COLLECTED := status=$$?; if [ $$status -eq 5 ]; then echo "no tests were collected"; exit 1; fi; exit $$status
# Fast tests of every part that newer transformers/peft/langchain/fastapi releases tend to break (under ~2 min).
SMOKE := tests/test_generation.py tests/test_injection.py tests/test_wrapped.py tests/test_streaming.py \
	tests/test_guard.py tests/backbones/test_llava_next.py tests/training/test_training_stage1.py \
	tests/training/test_training_stage2.py tests/adapters/test_runnable.py tests/adapters/test_gate.py \
	tests/adapters/test_middleware.py tests/adapters/test_chat_model.py tests/training/test_training_cli.py \
	tests/training/test_training_next.py tests/training/test_training_resume.py tests/test_classifier_only.py \
	tests/security/test_generation_spoofing.py tests/test_packaging.py tests/serving/test_moderations.py \
	tests/serving/test_chat_local.py tests/backbones/test_llava_onevision.py tests/backbones/test_qwen2_vl.py \
	tests/backbones/test_gemma3.py tests/backbones/test_idefics3.py tests/backbones/test_mistral3.py \
	tests/backbones/test_generic_families.py tests/serving/test_request_paths.py tests/adapters/test_payloads.py \
	tests/test_dtypes.py tests/test_categories.py tests/training/datasets/test_datasets_convert.py

.PHONY: demo test test-slow test-newest lint install lock

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(TORCH_SOURCE) "$(TORCH)"
	$(VENV)/bin/pip install -q -c constraints.txt -e ".[dev]"
	touch $@

# The newest releases of everything but torch (kept at the CPU wheel CI tests).
$(NEWEST)/.installed: pyproject.toml
	rm -rf $(NEWEST) && $(PYTHON) -m venv $(NEWEST)
	$(NEWEST)/bin/pip install -q --upgrade pip
	$(NEWEST)/bin/pip install -q $(TORCH_SOURCE) "$(TORCH)"
	echo "$(TORCH)" > $(NEWEST)/torch.txt
	$(NEWEST)/bin/pip install -q --upgrade --upgrade-strategy eager -c $(NEWEST)/torch.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/psaguard demo

test: $(VENV)/.installed
	PATH=$(VENV)/bin:$$PATH $(PYTEST) $(PARALLEL) tests; $(CHECK_COLLECTED)

# The tests marked `slow` (skipped by `make test`); CI runs them after the main suite.
test-slow: $(VENV)/.installed
	PATH=$(VENV)/bin:$$PATH PSAGUARD_SLOW=1 $(PYTEST) $(PARALLEL) -m slow tests; $(CHECK_COLLECTED)

# Always re-resolves, so it sees releases that came out since the last run.
test-newest:
	rm -f $(NEWEST)/.installed
	$(MAKE) $(NEWEST)/.installed
	$(NEWEST)/bin/pip list 2>/dev/null | grep -i -E '^(transformers|peft|bitsandbytes|accelerate|langchain-core|langchain|pydantic|tokenizers) '
	PATH=$(NEWEST)/bin:$$PATH $(PYTEST) $(PARALLEL) $(SMOKE); $(CHECK_COLLECTED)

# Rewrites constraints.txt with the newest releases that install together (then run `make test`).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q $(TORCH_SOURCE) "$(TORCH)"
	.venv-lock/bin/pip install -q -e ".[dev]"
	{ sed -n '1,2p' constraints.txt; .venv-lock/bin/pip freeze --all | grep -v -E '^(-e |#|psaguard|pip==)' \
		| sed -E 's/^torch==.*/$(TORCH)/'; } > constraints.new && mv constraints.new constraints.txt
	rm -rf .venv-lock

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check guard adapters training tests examples benchmarks
	$(VENV)/bin/ruff format --check guard adapters training tests examples benchmarks
