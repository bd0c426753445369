# qadtr: `make book` builds the study (PROFILE=quick by default), `make test` checks it.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PROFILE ?= quick
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_HASH := $(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(DEPS_HASH)
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
EXECUTED := book/results

# The data setting: QADTR_CIFAR10 if set, else the shared copy beside this checkout, if there is one.
SHARED_CIFAR := $(abspath ../shared/data/cifar10/cifar10-uint8.npz)
ifeq ($(strip $(QADTR_CIFAR10)),)
ifneq ($(wildcard $(SHARED_CIFAR)),)
export QADTR_CIFAR10 := $(SHARED_CIFAR)
endif
endif

.PHONY: venv book notebooks html test unit nbval bench clean

# (Re)build .venv when it is missing or when requirements.txt / pyproject.toml changed.
$(STAMP): requirements.txt pyproject.toml
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

notebooks: $(STAMP)
	@mkdir -p $(EXECUTED)
	@for nb in $(NOTEBOOKS); do \
	  echo "== $$nb (profile $(PROFILE))"; \
	  $(PY) -m papermill --no-progress-bar --cwd notebooks $$nb $(EXECUTED)/$$(basename $$nb) -p profile $(PROFILE); \
	done

html: $(STAMP)
	$(PY) -m qadtr_core.bookconfig $(EXECUTED) _build/_config.yml
	$(VENV)/bin/jupyter-book build . --config _build/_config.yml --builder html -W -n --keep-going
	@echo "The book: $(CURDIR)/_build/html/index.html"

book: notebooks html

unit: $(STAMP)
	$(PY) -m pytest tests

nbval: $(STAMP)
	$(PY) -m pytest --nbval-lax notebooks/

test: unit nbval

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf _build $(EXECUTED)
