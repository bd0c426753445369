# qadtr: `make book` builds the study (PROFILE=quick by default), `make test` checks it.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PROFILE ?= quick
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_HASH := $(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(DEPS_HASH)
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
EXECUTED ?= book/results
STATIC ?= $(abspath book/_static)
SMOKE_BOOK := _build/smoke-book

# The data setting: QADTR_CIFAR10 if set, else the shared copy beside this checkout, if there is one.
SHARED_CIFAR := $(abspath ../shared/data/cifar10/cifar10-uint8.npz)
ifeq ($(strip $(QADTR_CIFAR10)),)
ifneq ($(wildcard $(SHARED_CIFAR)),)
export QADTR_CIFAR10 := $(SHARED_CIFAR)
endif
endif

.PHONY: venv book notebooks html test unit nbval book-smoke browser chromium bench clean

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
	  extra=(); case $$nb in *07_scorecard*) extra=(-p static_dir $(STATIC));; esac; \
	  $(PY) -m papermill --no-progress-bar --cwd notebooks $$nb $(EXECUTED)/$$(basename $$nb) -p profile $(PROFILE) "$${extra[@]}"; \
	done

html: $(STAMP)
	$(PY) -m qadtr_core.bookconfig $(EXECUTED) _build/_config.yml
	$(VENV)/bin/jupyter-book build . --config _build/_config.yml --builder html -W -n --keep-going
	@echo "The book: $(CURDIR)/_build/html/index.html"

book: notebooks html

unit: $(STAMP)
	$(PY) -m pytest tests --ignore=tests/browser

nbval: $(STAMP)
	$(PY) -m pytest --nbval-lax notebooks/

# The CI-sized book: every notebook at the smoke profile, built in a copy so that book/results keeps its profile.
book-smoke: $(STAMP)
	rm -rf $(SMOKE_BOOK) && mkdir -p $(SMOKE_BOOK)/book/results
	cp _config.yml _toc.yml $(SMOKE_BOOK)/ && cp book/*.md book/*.bib book/*.png $(SMOKE_BOOK)/book/
	$(MAKE) --no-print-directory notebooks PROFILE=smoke EXECUTED=$(SMOKE_BOOK)/book/results STATIC=$(abspath $(SMOKE_BOOK))/book/_static
	cd $(SMOKE_BOOK) && $(abspath $(PY)) -m qadtr_core.bookconfig book/results _build/_config.yml && \
	  $(abspath $(VENV))/bin/jupyter-book build . --config _build/_config.yml --builder html -W -n --keep-going

# Debian's Chromium for the browser test (installed when missing; needs apt and root, as on CI).
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { echo "installing Debian's chromium"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

browser: $(STAMP) chromium
	QADTR_BOOK_HTML=$(SMOKE_BOOK)/_build/html $(PY) -m pytest tests/browser

test: unit nbval book-smoke browser

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf _build $(EXECUTED)
