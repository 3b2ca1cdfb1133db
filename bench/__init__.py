"""Benchmark scripts (run as files: `.venv/bin/python bench/<name>.py`); a package only so that module names
like bench.ledger do not clash with the apps (mypy maps files to modules)."""
