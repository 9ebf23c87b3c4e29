# `make test` runs the whole suite on SQLite, then again on a throwaway PostgreSQL server.
# `make demo` starts the demo project (SQLite, in-process broker).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The suite starts its own Redis and databases: a shell's exports ("Run it for real") stay out.
SUITE_ENV := env -u REDIS_URL -u DATABASE_URL

.PHONY: test test-sqlite test-postgres demo tox clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,redis,metrics]"
	touch $@

test: test-sqlite test-postgres

test-sqlite: $(BIN)/.installed
	$(SUITE_ENV) $(BIN)/python -m pytest $(PYTEST_ARGS)

test-postgres: $(BIN)/.installed
	$(SUITE_ENV) $(BIN)/python -m tests.pgserver $(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(BIN)/.installed
	$(BIN)/python testproject/manage.py migrate --verbosity 0
	$(BIN)/python testproject/manage.py demo_jobs
	$(BIN)/python testproject/manage.py run_taskiq_beat

tox: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet tox
	$(BIN)/tox run -e py311-django52,py312-django60,py313-django61

clean:
	rm -rf $(VENV) .tox testproject/demo.sqlite3
