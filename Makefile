# Two commands on a fresh machine:  make demo   and   make test
# Both create .venv and install what they need; the install is skipped when nothing changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-packages demo test lint checkpoint benchmark notebooks clean

# Debian packages for the browser tests (tests/browser drive Debian's headless Chromium).
APT_PACKAGES := chromium chromium-driver

setup: system-packages $(STAMP)

# Installs the missing ones when run as root; otherwise says what to install and goes on (the
# browser tests then fail with the same advice, or are left out with -m "not browser").
system-packages:
	@missing=""; \
	for package in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$package 2>/dev/null | grep -q "ok installed" || missing="$$missing $$package"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "apt-get install$$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q$$missing; \
	else \
	    echo "warning: Debian packages missing:$$missing; as root: apt-get install$$missing"; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the CPU build of torch that this machine keeps on disk; a plain "torch" would pull a CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/python -m vlm_notebook demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/pytest

# Retrain the shipped tiny checkpoint (minutes on a 2-core CPU); not part of the tests.
checkpoint: setup
	$(BIN)/python -m vlm_notebook.training smolvlm

# Same-shape random-weight SmolVLM-256M: time to first token on this machine.
benchmark: setup
	$(BIN)/python benchmarks/ttft_random_smolvlm.py

# Re-run the tutorial notebooks and save their outputs (nbval compares them in `make test`).
notebooks: setup
	HF_HUB_OFFLINE=1 $(BIN)/python notebooks/execute.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
