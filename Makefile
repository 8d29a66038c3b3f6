# deepmetric — two commands on a fresh clone:
#   make repro   set up .venv + DVC, then `dvc repro` (built-in glyph dataset, end to end)
#   make test    set up .venv, then the test suite (slow end-to-end cases excluded; `make test-slow` runs them)
#   make release VERSION=v3 [GIT_REMOTE=origin]   publish the committed pipeline state (docs/releases.md)
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deepmetric-installed
PYTHON ?= python3

export PATH := $(abspath $(BIN)):$(PATH)
export KEDRO_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1
export GX_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export PYTHONHASHSEED := 0

.PHONY: setup repro test test-slow dvc-setup release clean-venv

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@echo ">> make: creating $(VENV) with pinned dependencies (torch $$(grep '^torch==' requirements.txt) from this machine's disk; a few minutes the first time)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt -c constraints.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	@touch $(STAMP)
	@echo ">> make: $(VENV) ready"

setup: $(STAMP)

dvc-setup: setup
	@echo ">> make: DVC set-up (analytics off, local cache)"
	@test -d .dvc || $(BIN)/dvc init -q
	@$(BIN)/dvc config --local core.analytics false
	@$(BIN)/dvc config --local core.autostage true

repro: dvc-setup
	@echo ">> make: dvc repro (glyphs → ingest → validate → train → evaluate → export → index → bundle)"
	@mkdir -p logs
	$(BIN)/dvc repro
	@echo ">> make: results (all figures: dvc metrics show; full log: logs/deepmetric.log)"
	@$(BIN)/python -m deepmetric.evaluation.summary data/08_reporting

# A clone with no DVC remote publishes to this local folder (written to .dvc/config.local, not committed).
RELEASE_REMOTE ?= $(abspath $(CURDIR)/..)/deepmetric-dvc-remote
GIT_REMOTE ?=

release: dvc-setup
	@test -n "$(VERSION)" || { echo "usage: make release VERSION=v3 [GIT_REMOTE=origin]"; exit 2; }
	@test -n "$$($(BIN)/dvc remote list)" || { \
	  echo ">> make: no DVC remote configured: publishing to the local folder $(RELEASE_REMOTE) (.dvc/config.local)"; \
	  $(BIN)/dvc remote add --local -d local "$(RELEASE_REMOTE)"; }
	$(BIN)/deepmetric publish $(VERSION) $(if $(GIT_REMOTE),--git-remote $(GIT_REMOTE))

test: setup
	@echo ">> make: running the test suite (not slow)"
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: setup
	$(BIN)/python -m pytest -m slow -q

clean-venv:
	rm -rf $(VENV)
