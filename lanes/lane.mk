# Shared rules of a test lane. A lane is lanes/<name>/ holding a Makefile that sets LANE (and
# LANE_PY when it needs another Python) and includes this file, a requirements.txt with the
# framework's pinned versions, and tests/. Its venv lives outside the clone, in
# $(LANE_CACHE)/<name>, and is rebuilt only when requirements.txt, the core's dependencies in
# pyproject.toml or the lane's Python change (not when the checkout moves: the tests import bastion from this checkout's src/
# through PYTHONPATH, ahead of the copy installed for its dependencies).
#
# `make test` in a lane: install (skipped with a note when the install fails, unless
# LANE_STRICT=1, as `make test-adapters` sets), then run the lane's tests.
LANE_CACHE  ?= $(HOME)/.cache/bastion-lanes
LANE_PY     ?= python3.11
LANE_STRICT ?= 0
ROOT        := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))/..)
LANE_VENV   := $(LANE_CACHE)/$(LANE)
LANE_KEY    := $(shell (cat requirements.txt; sed -n '/^dependencies = \[/,/^\]/p' \
                 $(ROOT)/pyproject.toml; echo $(LANE_PY)) | sha1sum | cut -c1-12)
LANE_STAMP  := $(LANE_VENV)/.installed-$(LANE_KEY)
SHELL       := /bin/bash

.PHONY: test install

install:
	@if [ -f "$(LANE_STAMP)" ]; then exit 0; fi; \
	if ! command -v $(LANE_PY) >/dev/null 2>&1; then \
	  echo "lane $(LANE): $(LANE_PY) not found"; exit 3; fi; \
	echo "lane $(LANE): installing into $(LANE_VENV)"; \
	want=$$($(LANE_PY) -c 'import sys; print(sys.version)'); \
	have=$$("$(LANE_VENV)/bin/python" -c 'import sys; print(sys.version)' 2>/dev/null || true); \
	if [ "$$want" != "$$have" ]; then rm -rf "$(LANE_VENV)"; fi; \
	{ [ -x "$(LANE_VENV)/bin/python" ] || $(LANE_PY) -m venv "$(LANE_VENV)"; } \
	  && "$(LANE_VENV)/bin/pip" install -q --upgrade pip \
	  && "$(LANE_VENV)/bin/pip" install -q -r requirements.txt pytest \
	  && "$(LANE_VENV)/bin/pip" install -q "$(ROOT)" \
	  && rm -f "$(LANE_VENV)"/.installed-* && touch "$(LANE_STAMP)" \
	  || { echo "lane $(LANE): install failed"; exit 3; }

test:
	@$(MAKE) --no-print-directory install; rc=$$?; \
	if [ $$rc -ne 0 ]; then \
	  if [ "$(LANE_STRICT)" = 1 ]; then echo "lane $(LANE): FAILED to install"; exit 1; fi; \
	  echo "lane $(LANE): SKIPPED (could not install; run make test-adapters to fail on this)"; \
	  exit 0; fi; \
	echo "lane $(LANE): $$("$(LANE_VENV)/bin/python" -c 'import sys; print(sys.version.split()[0])')"; \
	cd "$(CURDIR)" && BASTION_ROOT="$(ROOT)" PYTHONPATH="$(ROOT)/src" \
	  "$(LANE_VENV)/bin/python" -m pytest -p no:cacheprovider --rootdir=. tests
