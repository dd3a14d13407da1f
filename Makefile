# Every target creates .venv at the repo root when it is missing, so each works on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast check ui-check demo e2e bench bench-quick conformance lint typecheck clean \
	compat compat-fast compat-ui dist wheel-check

# .venv runs the highest supported Airflow, pinned as in compat/ (one pin file per supported minor).
HIGHEST_PINS := compat/3.3.txt

$(STAMP): pyproject.toml $(HIGHEST_PINS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv
	$(VENV)/bin/uv pip install --quiet --python $(PY) -e ".[dev]" -r $(HIGHEST_PINS)
	touch $(STAMP)

venv: $(STAMP)

# The e2e extra (Celery, Amazon, OpenLineage providers, moto, psycopg2); scripts/e2e.py installs Debian's
# postgresql and redis-server itself when they are missing.
E2E_STAMP := $(VENV)/.installed-e2e
$(E2E_STAMP): $(STAMP)
	$(VENV)/bin/uv pip install --quiet --python $(PY) -e ".[dev,e2e]" -r $(HIGHEST_PINS)
	touch $(E2E_STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The edit-test loop: library and sandbox tests, no subprocesses or metadata DB (see the `slow` marker).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The connection form and Test button in the real Airflow UI, in headless Chromium; screenshots in build/ui-check/.
ui-check: $(STAMP)
	$(PY) scripts/ui_check.py

demo: $(STAMP)
	$(PY) scripts/demo.py

e2e: $(E2E_STAMP)
	$(PY) scripts/e2e.py

# The suite on every supported Airflow (2.11, 3.0, 3.1, 3.2, 3.3), each in .venv-compat/<minor> with the pins of
# compat/<minor>.txt; `make compat VERSIONS="2.11 3.3"` for some. compat-fast: the fast suite only.
VERSIONS ?=
compat: $(STAMP)
	$(PY) scripts/compat.py test $(VERSIONS)

compat-fast: $(STAMP)
	$(PY) scripts/compat.py test --fast $(VERSIONS)

# The browser check (make ui-check) on older Airflow UIs, each in its .venv-compat/<minor>: 3.0 and 3.1's
# React UI with the form from WTForms fields, 2.11's Flask UI (scripts/ui_check_airflow2.py). Screenshots in
# build/ui-check/airflow-<minor>/.
UI_VERSIONS ?= 2.11 3.0 3.1
compat-ui: $(STAMP)
	$(PY) scripts/compat.py ui $(UI_VERSIONS)

# sdist and wheel in dist/, checked with twine.
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(PY) -m twine check --strict dist/*

# The demo against the built wheel (not the source tree) in a clean venv, on the lowest and highest Airflow.
wheel-check: $(STAMP)
	$(PY) scripts/compat.py wheel lowest highest

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

bench-quick: $(STAMP)
	$(PY) benchmarks/run_all.py --quick

# The SQL on FHIR v2 suite against the view engine; the report, in the spec's format, is a build artefact.
conformance: $(STAMP)
	$(PY) -m airflow_provider_smart.views.conformance tests/views/sql-on-fhir-v2/tests \
		--report build/conformance/sql-on-fhir-v2-test-report.json

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# What CI runs: the linter, the type checker, then every test.
check: lint typecheck test

clean:
	rm -rf $(VENV) .venv-compat .venv-wheel .pytest_cache build dist
