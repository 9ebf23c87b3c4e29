# `make test` runs the whole suite on SQLite, then again on a throwaway PostgreSQL server, then on a
# throwaway MariaDB server (each skipped with a note where its binaries are missing; CI has them).
# `make demo` starts the demo project (SQLite, in-process broker).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The suite starts its own Redis and databases: a shell's exports ("Run it for real") stay out.
SUITE_ENV := env -u REDIS_URL -u DATABASE_URL

.PHONY: test test-sqlite test-postgres test-mariadb demo docs dist-check lint tox clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,redis,metrics,docs]"
	touch $@

test: test-sqlite test-postgres test-mariadb

# Tests that never touch the database under test (marker database_independent) run in the SQLite pass only;
# a PYTEST_ARGS with its own -m replaces this one (pytest keeps the last).
OTHER_DATABASES := -m "not database_independent"

test-sqlite: $(BIN)/.installed
	$(SUITE_ENV) $(BIN)/python -m pytest $(PYTEST_ARGS)

test-postgres: $(BIN)/.installed
	$(SUITE_ENV) $(BIN)/python -m tests.pgserver $(BIN)/python -m pytest $(OTHER_DATABASES) $(PYTEST_ARGS)

# The MariaDB driver is built only where the server is installed (it needs libmariadb-dev and pkg-config).
test-mariadb: $(BIN)/.installed
	if command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ]; then \
		$(BIN)/python -m pip install --quiet -e ".[mysql]"; fi
	$(SUITE_ENV) $(BIN)/python -m tests.mariadbserver $(BIN)/python -m pytest $(OTHER_DATABASES) $(PYTEST_ARGS)

# TASKIQ_BEAT_DEMO: the demo settings declare a job in code as well, which `taskiq_beat sync` creates.
demo: $(BIN)/.installed
	$(BIN)/python testproject/manage.py migrate --verbosity 0
	TASKIQ_BEAT_DEMO=1 $(BIN)/python testproject/manage.py taskiq_beat sync
	$(BIN)/python testproject/manage.py demo_jobs
	TASKIQ_BEAT_DEMO=1 $(BIN)/python testproject/manage.py run_taskiq_beat

# The documentation site (mkdocs.yml, docs/) into site/; --strict fails on a broken link or reference.
docs: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

# The built distribution (scripts/dist_check.py): sdist and wheel built and checked with twine, the wheel
# installed in a new virtualenv and run from a throwaway project (migrate, check, a job sent by run_taskiq_beat).
dist-check: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e ".[release]"
	$(BIN)/python scripts/dist_check.py
# ruff (lint and format) and mypy, as configured in pyproject.toml; .pre-commit-config.yaml runs the same.
LINT_PATHS := django_taskiq_beat tests scripts testproject
$(BIN)/.lint-installed: $(BIN)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[lint]"
	touch $@

lint: $(BIN)/.lint-installed
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

# The whole matrix by default; CI leaves out py311-django52, which `make test` has just run
# (Django 6 needs Python 3.12, so Python 3.11's venv always has Django 5.2). The environments run side by
# side, one per core (each with its own SQLite file and ports); each prints its output when it ends.
TOX_ENVS ?= py311-django52,py312-django60,py313-django61

tox: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet tox
	$(BIN)/tox run-parallel --parallel-no-spinner -e $(TOX_ENVS)

clean:
	rm -rf $(VENV) .tox testproject/demo.sqlite3 site dist
