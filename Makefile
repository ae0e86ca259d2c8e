# Two commands on a fresh machine:  make demo   and   make test
# Both create .venv and install what they need, at the versions pinned in requirements/test.lock;
# an install is skipped when nothing it depends on changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements/test.lock
# pip, setuptools and the package itself: the package is installed without build isolation so
# that its build uses the locked setuptools, not whatever release PyPI has today.
PIP := $(BIN)/pip install --quiet
EDITABLE := --no-deps --no-build-isolation -e .
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: setup setup-demo system-packages demo test test-torchvision lint checkpoint benchmark notebooks lock \
	test-latest clean

setup: system-packages $(DEV_STAMP)
setup-demo: $(RUNTIME_STAMP)

# Debian packages for the browser tests (tests/browser drive Debian's headless Chromium).
APT_PACKAGES := chromium chromium-driver

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

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# What the package needs to run (make demo): its dependencies at the locked versions, no test tools.
# The lock names torch's CPU build, which pip takes from this machine's disk (a plain "torch"
# would pull a CUDA build of several GB).
$(RUNTIME_STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	grep -E '^(pip|setuptools)==' $(LOCK) | xargs $(PIP)
	$(PIP) -c $(LOCK) torch
	$(PIP) -c $(LOCK) --no-build-isolation -e .
	touch $@

# Everything make test installs: exactly the lock, then the package itself.
$(DEV_STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	grep -E '^(pip|setuptools)==' $(LOCK) | xargs $(PIP)
	$(PIP) -r $(LOCK)
	$(PIP) $(EDITABLE)
	$(BIN)/pip check
	touch $(RUNTIME_STAMP) $@

demo: setup-demo
	$(BIN)/python -m vlm_notebook demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/pytest
	$(MAKE) test-torchvision

# Most users have torchvision, and some models need it (LFM2-VL's image processor exists only for
# it; FastVLM's vision tower is a timm model, and timm needs torchvision): the generic family's
# tests and the shipped checkpoints' exact answers run again in a second environment that has both.
# PyPI's torchvision does not import beside the lock's CPU torch, so that environment takes torch
# 2.14.1 with torchvision 0.29.1 (a CUDA build that also runs on the CPU, about 5.5 GB; pip takes it
# from this project's machines' disk) and timm, as $(TORCHVISION) pins them, and the lock's other packages.
TV_VENV := .venv-torchvision
TV_STAMP := $(TV_VENV)/.installed
TORCHVISION := requirements/torchvision.txt
TORCHVISION_TESTS := tests/test_generic.py tests/test_qwen2vl.py tests/test_smolvlm.py tests/test_shapes_gemma4.py

$(TV_STAMP): pyproject.toml $(LOCK) $(TORCHVISION)
	rm -rf $(TV_VENV)
	$(PYTHON) -m venv $(TV_VENV)
	grep -E '^(pip|setuptools)==' $(LOCK) | xargs $(TV_VENV)/bin/pip install --quiet
	$(TV_VENV)/bin/pip install --quiet -r $(TORCHVISION)
	grep -v '^torch==' $(LOCK) > $(TV_VENV)/lock-but-torch.txt
	$(TV_VENV)/bin/pip install --quiet -r $(TV_VENV)/lock-but-torch.txt
	$(TV_VENV)/bin/pip install --quiet $(EDITABLE)
	$(TV_VENV)/bin/pip check
	touch $@

# The lane's environment takes about 6.3 GB (measured on Linux x86_64). Where the project's disk
# has less than TV_NEEDS_GB free, counting an outdated environment (it is rebuilt from scratch), the
# lane is left out with a warning rather than failing halfway through pip.
TV_NEEDS_GB := 7
TV_ROOM_GB = $$(( ($$(df -Pk . | awk 'NR == 2 {print $$4}') \
	+ $$({ du -sk $(TV_VENV) 2>/dev/null || echo 0; } | cut -f1)) / 1048576 ))

test-torchvision:
	@room_gb=$(TV_ROOM_GB); \
	if ! $(MAKE) --no-print-directory --question $(TV_STAMP) && [ $$room_gb -lt $(TV_NEEDS_GB) ]; then \
	    echo "warning: the torchvision lane ($(TORCHVISION_TESTS)) is left out: its environment" \
	         "needs $(TV_NEEDS_GB) GB on this disk and $$room_gb GB is free. Free some space, then run:" \
	         "make test-torchvision"; \
	else \
	    $(MAKE) --no-print-directory $(TV_STAMP) && \
	    HF_HUB_OFFLINE=1 $(TV_VENV)/bin/pytest $(TORCHVISION_TESTS); \
	fi

# Renew requirements/test.lock: the newest releases that pyproject.toml admits, installed into a
# scratch environment the way the lock is installed, then frozen. Review the diff, run make test.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip setuptools
	.venv-lock/bin/pip install --quiet torch==2.13.0
	.venv-lock/bin/pip install --quiet --no-build-isolation -e ".[dev]"
	{ echo "# Every package make test installs, at exact versions (Python 3.11, Linux x86_64)."; \
	  echo "# Generated by 'make lock' from pyproject.toml; tests/test_lock.py checks that the two agree."; \
	  .venv-lock/bin/pip freeze --all --exclude-editable | LC_ALL=C sort -f; } > $(LOCK)
	rm -rf .venv-lock

# The tests against the newest releases pyproject.toml admits (not the lock): run it to learn,
# before users do, whether a release published since the lock breaks the package. Not part of CI.
# torch is upgraded too, to the newest release pip can take (on this project's machines pip is
# capped at torch 2.14.1, a CUDA build of about 5.5 GB kept on disk).
test-latest: system-packages
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/pip install --quiet --upgrade pip setuptools
	.venv-latest/bin/pip install --quiet torch==2.13.0
	.venv-latest/bin/pip install --quiet --upgrade --upgrade-strategy eager --no-build-isolation -e ".[dev]"
	.venv-latest/bin/pip freeze --exclude-editable | grep -iE '^(transformers|tokenizers|ipywidgets|ipykernel|nbval)=='
	.venv-latest/bin/ruff check .
	.venv-latest/bin/mypy
	HF_HUB_OFFLINE=1 .venv-latest/bin/pytest

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
	rm -rf $(VENV) $(TV_VENV) .venv-lock .venv-latest .mypy_cache .ruff_cache .pytest_cache
