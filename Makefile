# The study's commands. A newcomer needs two:
#   make test    set up .venv if missing, then run the test suite (it builds the book and opens it in a browser)
#   make book    set up .venv if missing, execute notebooks/ with papermill, build the HTML book
# and, on a machine with a CUDA GPU:
#   make measure [PYTHON=python3]   execute the notebooks with mode=measure (appends rows to data/)
#
# Notebook parameters pass through: make book MODE=replay GPU=h100 PARAMS="-p batch 128"

SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

VENV            := .venv
VENV_PYTHON     := $(VENV)/bin/python
# Set on the command line only (never taken from the environment): PYTHON, MODE, GPU, PARAMS, PYTEST_ARGS.
PYTHON          := $(VENV_PYTHON)
MODE            :=
GPU             :=
PARAMS          :=
PYTEST_ARGS     :=
BOOTSTRAP_PYTHON := python3
KERNEL          := convfirst
MATHJAX_VERSION := 3.2.2
MATHJAX_JS      := book/_vendor/mathjax/tex-mml-chtml.js
NPM_DIR         := build/npm
SETUP_STAMP     := $(VENV)/.convfirst-setup-done
VENV_NEEDS_KB   := 8000000
SUDO            := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)

BOOK_ARGS = $(if $(MODE),--mode $(MODE)) $(if $(GPU),--gpu $(GPU)) $(PARAMS)

# With the default PYTHON the project's own .venv is created and kept up to date; with PYTHON=... an existing
# environment is used as it is and nothing is installed.
ifeq ($(PYTHON),$(VENV_PYTHON))
PYTHON_READY := $(SETUP_STAMP)
KERNEL_READY :=
else
PYTHON_READY := check-python
KERNEL_READY := kernel
endif

.PHONY: help test book measure setup browser check-python kernel clean distclean

help:
	@echo "make test     set up .venv if needed, run the tests (pytest, includes building the book)"
	@echo "make book     set up .venv if needed, execute notebooks/ and build book/_build/html/index.html"
	@echo "              parameters: MODE=auto|replay|measure GPU=h100 PARAMS='-p NAME VALUE ...'"
	@echo "make measure  on a CUDA GPU: execute the notebooks with mode=measure, appending to data/"
	@echo "              PYTHON=python3 uses an existing environment and installs nothing"
	@echo "make clean    remove built and executed files (make distclean also removes .venv)"

setup: $(PYTHON_READY)

# One set-up, redone only when the pinned requirements or the package definition change.
$(SETUP_STAMP): requirements.txt pyproject.toml
	@avail=$$(df -Pk . | awk 'NR == 2 {print $$4}'); if [ -n "$$avail" ] && [ "$$avail" -lt $(VENV_NEEDS_KB) ]; then \
	  echo "warning: $$((avail / 1048576)) GB free on this disk; $(VENV) (torch with its CUDA libraries, triton, jupyter-book)"; \
	  echo "         needs about 7 GB: the install below may fail with 'No space left on device'"; fi
	@test -x $(VENV_PYTHON) || { echo "Creating $(VENV) with $(BOOTSTRAP_PYTHON)"; $(BOOTSTRAP_PYTHON) -m venv $(VENV); }
	$(VENV_PYTHON) -m pip install --quiet -r requirements.txt -e .
	$(VENV_PYTHON) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (convfirst)"
	@touch $@

check-python:
	@$(PYTHON) -c "import convfirst, torch" 2>/dev/null || { \
	  echo "error: PYTHON=$(PYTHON) cannot import convfirst (and torch). Install the package into it without"; \
	  echo "       network or dependencies: $(PYTHON) -m pip install --no-deps --no-build-isolation --no-index -e ."; \
	  exit 1; }

# In an existing environment (PYTHON=...), register the notebook kernel once if it is missing.
kernel: check-python
	@$(PYTHON) -c "import sys; from jupyter_client.kernelspec import KernelSpecManager; \
	  sys.exit('$(KERNEL)' not in KernelSpecManager().find_kernel_specs())" 2>/dev/null \
	  || $(PYTHON) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (convfirst)"

# MathJax served from the book itself, so the built site needs no network (npm package, pinned).
$(MATHJAX_JS):
	@command -v npm >/dev/null || { echo "error: npm is needed once to fetch MathJax $(MATHJAX_VERSION) for the offline book"; exit 1; }
	npm install --prefix $(NPM_DIR) --no-save --no-audit --no-fund --loglevel=error mathjax@$(MATHJAX_VERSION)
	rm -rf book/_vendor/mathjax
	mkdir -p book/_vendor
	cp -r $(NPM_DIR)/node_modules/mathjax/es5 book/_vendor/mathjax

# Headless Chromium for the book test (Debian package), installed once when missing.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  if command -v apt-get >/dev/null; then \
	    echo "Installing chromium (apt-get) for the book's browser test"; \
	    $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null \
	      || echo "warning: could not install chromium; the browser checks of the book test will be skipped"; \
	  else echo "warning: no chromium and no apt-get; the browser checks of the book test will be skipped"; fi; }

test: $(PYTHON_READY) $(KERNEL_READY) $(MATHJAX_JS) browser
	@$(PYTHON) -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "error: pytest collected no tests"; fi; exit $$status

book: $(PYTHON_READY) $(KERNEL_READY) $(MATHJAX_JS)
	$(PYTHON) -m convfirst.book --kernel $(KERNEL) $(BOOK_ARGS)

measure: $(PYTHON_READY)
	$(PYTHON) -m convfirst.book --mode measure $(if $(GPU),--gpu $(GPU)) $(PARAMS) --executor auto --no-html

clean:
	rm -rf book/_build book/chapters book/_vendor build .pytest_cache
	find . -name __pycache__ -type d -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) convfirst.egg-info
