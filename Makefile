# make demo  — the live migration end to end on embedded defaults
# make test  — lint, type-check and the whole test suite
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint typecheck pytest pg-binaries bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard cdc/mapping/*.c cdc/mapping/*.h) cdc/_fastevents.c
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' --config-settings editable_mode=compat
	@touch $@

# PostgreSQL server binaries from Debian's packages when initdb is missing.
pg-binaries:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then \
	  echo "installing PostgreSQL server binaries"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q postgresql; \
	fi

lint: venv
	$(VENV)/bin/ruff check .

typecheck: venv
	$(VENV)/bin/mypy cdc backfill verify ops tests

# pytest exits 5 when it ran no test: that is a failure here.
pytest: venv pg-binaries
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest ran no tests: failing"; exit 1; fi; exit $$rc

test: lint typecheck pytest

demo: venv pg-binaries
	$(PY) -m ops.demo $(DEMO_ARGS)

bench: venv pg-binaries
	$(PY) -m tests.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .demo
