# Two commands do all the set-up on a fresh machine:
#   make demo   # set up, then run the built-in demo end to end (preprocessing and tiny training)
#   make test   # set up, then run the tests
#
# Set-up: a virtual environment in .venv. If the python you call already has torch (say your
# CUDA build), the venv sees it (--system-site-packages) and keeps it; otherwise torch is
# installed as $(TORCH_SPEC) (torch==2.13.0: the local CPU wheel on a CPU machine).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
CORES ?= 2
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed

.PHONY: setup demo test lint clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
		echo "setup: keeping the torch of $(PYTHON)"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
		$(BIN)/python -m pip install -q --upgrade pip; \
		$(BIN)/python -m pip install -q "$(TORCH_SPEC)"; \
	fi
	$(BIN)/python -m pip install -q -e ".[test]"
	@touch $@

demo: $(STAMP)
	$(BIN)/snakemake --configfile config/demo.yaml --cores $(CORES) all train

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/snakemake --lint --cores 1

clean-demo:
	rm -rf results logs .snakemake
