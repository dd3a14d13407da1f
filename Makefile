# Every target creates .venv at the repo root when it is missing, so each works on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo e2e bench bench-quick lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv
	$(VENV)/bin/uv pip install --quiet --python $(PY) -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# The e2e extra (Celery, Amazon, OpenLineage providers, moto, psycopg2); scripts/e2e.py installs Debian's
# postgresql and redis-server itself when they are missing.
E2E_STAMP := $(VENV)/.installed-e2e
$(E2E_STAMP): $(STAMP)
	$(VENV)/bin/uv pip install --quiet --python $(PY) -e ".[dev,e2e]"
	touch $(E2E_STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) scripts/demo.py

e2e: $(E2E_STAMP)
	$(PY) scripts/e2e.py

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

bench-quick: $(STAMP)
	$(PY) benchmarks/run_all.py --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache build dist
