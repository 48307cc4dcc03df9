# Two commands: `make demo` and `make test`. Both create or refresh .venv first (idempotent: pip runs only
# when pyproject.toml or constraints.txt changed since the last install).
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.adray-installed
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test lint bench venv check-system clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt | check-system
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# open3d (point clouds) needs the system library libusb-1.0 at import time. As root (CI, containers) it is
# installed here with apt-get; otherwise make stops with the one command to run.
check-system:
	@ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so' || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing libusb-1.0-0 (open3d needs it) with apt-get"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libusb-1.0-0 >/dev/null || exit 1; \
	  else \
	    echo "error: open3d needs the system library libusb-1.0; install it with: sudo apt-get install -y libusb-1.0-0"; \
	    exit 1; \
	  fi; }

demo: $(STAMP)
	$(VENV)/bin/adray demo --output demo_out

test: $(STAMP)
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check adray jobs tests

bench: $(STAMP)
	$(PY) jobs/benchmark.py all

clean:
	rm -rf $(VENV) demo_out bench_out .pytest_cache
