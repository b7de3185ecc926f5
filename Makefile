# bastion — `make demo` and `make test` are the two commands a new machine needs.
PY       ?= python3.11
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
# Lanes (framework adapters, heavy extras) keep their venvs outside the clone so reruns are quick.
LANE_CACHE ?= $(HOME)/.cache/bastion-lanes

.PHONY: demo test test-core test-lanes test-adapters bench bench-agentdojo lint clean sys-deps

$(STAMP): pyproject.toml requirements-dev.lock
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.lock
	$(BIN)/pip install -q --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bastion demo --dir demo-out

test: test-core test-lanes

# The sandbox's strongest isolation uses bubblewrap. Installed here when we may (root with apt);
# elsewhere its tests skip and say why.
sys-deps:
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null) \
	  || echo "note: bubblewrap not installed; BWRAP sandbox tests will skip"; }

test-core: $(STAMP) sys-deps
	$(BIN)/python -m pytest

# Each lane is a directory under lanes/ (see lanes/lane.mk): a framework adapter or heavy extra
# with its own venv under $(LANE_CACHE). `make test` runs every lane that installs (a lane that
# cannot install says so); `make test-adapters` runs them all and fails on an install failure.
test-lanes: $(STAMP)
	@set -e; n=0; for lane in lanes/*/; do \
	  [ -f "$$lane/Makefile" ] || continue; n=$$((n+1)); \
	  $(MAKE) --no-print-directory -C "$$lane" test LANE_CACHE=$(LANE_CACHE); \
	done; echo "lanes run: $$n"

test-adapters: $(STAMP)
	@$(MAKE) --no-print-directory test-lanes LANE_STRICT=1

# The reference implementation, measured side by side, lives in its own venv.
REF_STAMP := .venv-ref/.installed
$(REF_STAMP):
	@test -x .venv-ref/bin/python || $(PY) -m venv .venv-ref
	.venv-ref/bin/pip install -q agent-governance-toolkit-core==5.0.0
	@touch $(REF_STAMP)

bench: $(STAMP) $(REF_STAMP)
	$(BIN)/python benchmarks/bench_kernel.py
	$(BIN)/python benchmarks/bench_audit.py
	$(BIN)/python benchmarks/bench_flow.py
	$(BIN)/python benchmarks/bench_state.py

# AgentDojo (banking, slack; v1.2.2) with a scripted agent, offline; its own venv in $(LANE_CACHE).
bench-agentdojo:
	$(MAKE) --no-print-directory -C benchmarks/agentdojo run LANE_CACHE=$(LANE_CACHE) PY=$(PY)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
