# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
UV      ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
VENV    := .venv
PY      := $(VENV)/bin/python
RAPPORT := $(VENV)/bin/rapport
PERSONS ?= 100000

.PHONY: demo test test-cluster test-long lint bench install assets browser clean

$(UV):
	python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-groups --all-extras --compile-bytecode  # this machine sets PYTHONDONTWRITEBYTECODE: without .pyc every process start recompiles Ibis, SQLAlchemy, FastAPI
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

install: $(VENV)/.synced assets
assets: node_modules/.installed

## Chromium for the browser tests (Debian's package; Playwright drives it).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: install
	$(RAPPORT) demo --persons $(PERSONS)

lint: $(VENV)/.synced
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

## The suite in TEST_WORKERS processes (pytest-xdist): on 2 cores 13-14 minutes instead of 22.
TEST_WORKERS ?= 2
test: install browser lint
	$(VENV)/bin/pytest -n $(TEST_WORKERS)
	$(VENV)/bin/pytest -m spark tests/test_conditions_spark.py tests/test_warehouse_spark.py  # PySpark (~3 min)

## The suite again on the cluster profile's stores (issue 7): a PostgreSQL database and a
## JetStream event log per workspace, DuckDB as the warehouse (Spark: `make test`), no browser
## tests (docs/operations.md, Cluster).
test-cluster: install
	RAPPORT_REQUIRE_SERVICES=1 RAPPORT_TEST_PROFILE=cluster $(VENV)/bin/pytest -m 'not bench and not spark and not long and not browser'

## Fault, fuzz and soak tests (issue 7): minutes each; .ci/run runs them when time allows.
test-long: install browser
	$(VENV)/bin/pytest -m long

bench: install
	$(VENV)/bin/pytest -m bench -s bench

clean:
	rm -rf $(VENV) node_modules rapport-data
