# qadtr: `make book` builds the study (PROFILE=quick by default), `make test` checks it.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PROFILE ?= quick
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_HASH := $(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(DEPS_HASH)
# The summary chapters run after every other chapter (as in qadtr_core.build.jobs.SUMMARY_CHAPTERS; 09 sorts after them).
SUMMARY_NOTEBOOKS := notebooks/07_scorecard.ipynb notebooks/08_reproduce.ipynb
NOTEBOOKS := $(filter-out $(SUMMARY_NOTEBOOKS),$(sort $(wildcard notebooks/*.ipynb))) $(SUMMARY_NOTEBOOKS)
EXECUTED ?= book/results
STATIC ?= $(abspath book/_static)
SMOKE_BOOK := _build/smoke-book
# The book renders with BOOK_PY (default: the study's venv); the publish workflow passes the python of a
# minimal environment (requirements-book.txt, no torch), and then nothing is installed here.
BOOK_PY ?= $(PY)
BOOK_DEPS := $(if $(filter $(PY),$(BOOK_PY)),$(STAMP))
JUPYTER_BOOK = $(BOOK_PY) -c 'import sys; from jupyter_book.cli.main import main; sys.argv[0] = "jupyter-book"; sys.exit(main())'

# The data setting: QADTR_CIFAR10 if set, else the shared copy beside this checkout, if there is one.
SHARED_CIFAR := $(abspath ../shared/data/cifar10/cifar10-uint8.npz)
ifeq ($(strip $(QADTR_CIFAR10)),)
ifneq ($(wildcard $(SHARED_CIFAR)),)
export QADTR_CIFAR10 := $(SHARED_CIFAR)
endif
endif
# Folders come from settings, never from where the package is installed; the notebooks run with
# notebooks/ as working directory, so the defaults are made absolute here.
export QADTR_ARTIFACTS ?= $(CURDIR)/artifacts
export QADTR_DATA_DIR ?= $(CURDIR)/data

.PHONY: venv book notebooks html test unit nbval book-smoke committed-book browser chromium bench clean lint export import \
	models-bundle render-copy

# The quick profile's trained models, shipped with the repository (qadtr_core.build.models_bundle): `make notebooks`
# (and so `make book`) imports it first when the cache lacks one of its models; `make models-bundle` rewrites it
# from the cache (the models of the current configs only, weights in float16).
MODELS_BUNDLE ?= bundle/quick-models.tar.xz
BUNDLE_SEEDS ?=

# (Re)build .venv when it is missing or when requirements.txt / pyproject.toml changed.
$(STAMP): requirements.txt pyproject.toml
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

notebooks: $(STAMP)
	@mkdir -p $(EXECUTED)
	@if [ -f $(MODELS_BUNDLE) ]; then $(PY) -m qadtr_core.build.cli import --missing-only --profile $(PROFILE) $(MODELS_BUNDLE); fi
	@commit=$$($(PY) -m qadtr_core.build.bookconfig commit); \
	for nb in $(NOTEBOOKS); do \
	  echo "== $$nb (profile $(PROFILE))"; \
	  extra=(); case $$nb in *07_scorecard*) extra=(-p static_dir $(STATIC) -p scorecard_json $(abspath $(EXECUTED))/scorecard.json);; \
	    *02_defenses*|*03_ablations*) extra=(-p defenses_json $(abspath $(EXECUTED))/defenses.json);; \
	    *09_certified*) extra=(-p certified_json $(abspath $(EXECUTED))/certified.json);; esac; \
	  $(PY) -m papermill --no-progress-bar --cwd notebooks $$nb $(EXECUTED)/$$(basename $$nb) -p profile $(PROFILE) "$${extra[@]}"; \
	  $(PY) -m qadtr_core.build.bookconfig stamp --commit $$commit $(EXECUTED)/$$(basename $$nb); \
	  others=$$($(PY) -c "from qadtr_core.build.jobs import chapter_seeds; from qadtr_core.profiles import get_profile; \
	    print(*chapter_seeds('$$(basename $$nb .ipynb)', get_profile('$(PROFILE)'))[1:])"); \
	  for s in $$others; do \
	    echo "== $$nb seed $$s (profile $(PROFILE), beside the book: its claims feed the scorecard)"; \
	    mkdir -p $(QADTR_ARTIFACTS)/runs/$(PROFILE)/seed$$s; \
	    $(PY) -m papermill --no-progress-bar --cwd notebooks $$nb $(QADTR_ARTIFACTS)/runs/$(PROFILE)/seed$$s/$$(basename $$nb) \
	      -p profile $(PROFILE) -p seed $$s "$${extra[@]}"; \
	  done; \
	done

# The book from the executed notebooks in book/results (committed ones in a fresh clone): nothing is executed.
html: $(BOOK_DEPS)
	$(BOOK_PY) -m qadtr_core.build.bookconfig $(EXECUTED) _build/_config.yml
	$(JUPYTER_BOOK) build . --config _build/_config.yml --toc _build/_toc.yml --builder html -W -n --keep-going
	@echo "The book: $(CURDIR)/_build/html/index.html"

book: notebooks html

unit: $(STAMP)
	$(PY) -m pytest tests --ignore=tests/browser

nbval: $(STAMP)
	$(PY) -m pytest --nbval-lax notebooks/

# The CI-sized book: every notebook at the smoke profile, built in a copy so that book/results keeps its profile.
book-smoke: $(STAMP)
	rm -rf $(SMOKE_BOOK) && mkdir -p $(SMOKE_BOOK)/book/results
	$(MAKE) --no-print-directory notebooks PROFILE=smoke EXECUTED=$(SMOKE_BOOK)/book/results STATIC=$(abspath $(SMOKE_BOOK))/book/_static
	$(MAKE) --no-print-directory render-copy DEST=$(SMOKE_BOOK)

# The one render recipe of a book copy in DEST whose book/results (and book/_static) are in place: the
# pages and configuration of this checkout beside them, the stamps checked, then Jupyter Book, warnings fatal.
render-copy: $(STAMP)
	@[ -n "$(DEST)" ] && [ -d "$(DEST)/book/results" ] || { echo "render-copy: DEST=$(DEST) has no book/results"; exit 2; }
	cp _config.yml _toc.yml $(DEST)/ && cp book/*.md book/*.bib book/*.png $(DEST)/book/ && cp -r book/css $(DEST)/book/
	cd $(DEST) && $(abspath $(PY)) -m qadtr_core.build.bookconfig book/results _build/_config.yml && \
	  $(abspath $(VENV))/bin/jupyter-book build . --config _build/_config.yml --toc _build/_toc.yml --builder html -W -n --keep-going

# The committed results (book/results, book/_static) rendered in a copy, as the publish workflow renders
# them (the files of HEAD, not the working tree): one profile and one commit throughout (bookconfig check),
# no execution. Skipped while none is committed.
COMMITTED_BOOK := _build/committed-book
committed-book: $(STAMP)
	rm -rf $(COMMITTED_BOOK)
	@git rev-parse --git-dir >/dev/null || { echo "committed-book: not a git checkout, so no committed results to check"; exit 1; }
	@if [ -n "$$(git ls-files 'book/results/*.ipynb')" ]; then \
	  mkdir -p $(COMMITTED_BOOK)/book && \
	  git archive HEAD book/results book/_static | tar -x -C $(COMMITTED_BOOK) && \
	  $(PY) -m qadtr_core.build.bookconfig check $(COMMITTED_BOOK)/book/results && \
	  $(MAKE) --no-print-directory render-copy DEST=$(COMMITTED_BOOK); \
	else echo "no results committed under book/results: nothing to render"; fi

# Chromium for the browser test, when none is on PATH: Debian's package (needs apt and root, as on CI),
# else Playwright's own build, linked as $(VENV)/bin/chromium.
chromium: $(STAMP)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || [ -x $(VENV)/bin/chromium ] || \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "no apt as root: installing Playwright's own Chromium"; $(PY) -m playwright install chromium && \
	    ln -sf "$$($(PY) -c 'from playwright.sync_api import sync_playwright as s; p = s().start(); print(p.chromium.executable_path); p.stop()')" $(VENV)/bin/chromium; \
	  fi

browser: $(STAMP) chromium
	PATH="$(abspath $(VENV))/bin:$$PATH" QADTR_BOOK_HTML=$(SMOKE_BOOK)/_build/html $(PY) -m pytest tests/browser
	@if [ -f $(COMMITTED_BOOK)/_build/html/index.html ]; then \
	  PATH="$(abspath $(VENV))/bin:$$PATH" QADTR_BOOK_HTML=$(COMMITTED_BOOK)/_build/html \
	    QADTR_TEST_ARTIFACTS=test-artifacts/committed $(PY) -m pytest tests/browser; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint unit nbval book-smoke committed-book browser

# The artifact cache of a profile as one checksummed archive (a cache built on a GPU serves a CPU machine):
#   make export PROFILE=quick ARCHIVE=qadtr-quick.tar.gz   then, elsewhere,   make import ARCHIVE=qadtr-quick.tar.gz
ARCHIVE ?= qadtr-$(PROFILE)-artifacts.tar.gz
export: $(STAMP)
	$(PY) -m qadtr_core.build.cli export --profile $(PROFILE) $(ARCHIVE)

import: $(STAMP)
	$(PY) -m qadtr_core.build.cli import $(ARCHIVE)

# Rewrite the committed models bundle from the cache, then re-import it, so that the chapters executed here
# run on the float16-rounded weights a user of the bundle gets.
models-bundle: $(STAMP)
	$(PY) -m qadtr_core.build.cli export --profile quick --models-only $(if $(BUNDLE_SEEDS),--seeds $(BUNDLE_SEEDS)) $(MODELS_BUNDLE)
	$(PY) -m qadtr_core.build.cli import $(MODELS_BUNDLE)

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py

# book/results holds committed results: `make clean` keeps them (`git checkout book/results` restores them).
clean:
	rm -rf _build
