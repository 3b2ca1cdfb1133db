"""The settings pick the runtime profile from the environment, and refuse to run in production without a secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, os
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
import django
django.setup()
from django.conf import settings
print(json.dumps({
    "debug": settings.DEBUG,
    "production": settings.PRODUCTION,
    "dev_wallets": settings.CHAIN_DEV_WALLETS,
    "hosts": settings.ALLOWED_HOSTS,
    "engine": settings.DATABASES["default"]["ENGINE"],
    "db_name": str(settings.DATABASES["default"]["NAME"]),
    "channels": settings.CHANNEL_LAYERS["default"]["BACKEND"],
    "eager": settings.CELERY_TASK_ALWAYS_EAGER,
    "broker": settings.CELERY_BROKER_URL,
}))
"""

# Only these pass through, so that the caller's settings variables (e.g. a full-profile CI run) stay out of the probe.
_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "SYSTEMROOT", "TMPDIR")


def run_settings(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {name: os.environ[name] for name in _KEEP if name in os.environ}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120
    )


def probe(**env: str) -> dict[str, object]:
    result = run_settings(**env)
    assert result.returncode == 0, result.stderr
    loaded: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def test_embedded_profile_is_the_default() -> None:
    got = probe()
    assert got["debug"] is False
    assert got["production"] is False and got["dev_wallets"] is True
    assert got["engine"] == "django.db.backends.sqlite3"
    assert got["db_name"] == str(ROOT / "var" / "db.sqlite3")
    assert got["channels"] == "channels.layers.InMemoryChannelLayer"
    assert got["eager"] is True


def test_debug_is_on_only_when_a_developer_turns_it_on() -> None:
    assert probe(DJANGO_DEBUG="true")["debug"] is True
    assert probe(DJANGO_DEBUG="false")["debug"] is False


def test_production_without_secret_key_refuses_to_start() -> None:
    result = run_settings(PRODUCTION="true")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "SECRET_KEY" in result.stderr


def test_production_refuses_debug_and_dev_wallets() -> None:
    debug = run_settings(PRODUCTION="true", SECRET_KEY="x" * 50, DJANGO_DEBUG="true")
    assert debug.returncode != 0 and "never with PRODUCTION" in debug.stderr
    wallets = run_settings(PRODUCTION="true", SECRET_KEY="x" * 50, CHAIN_DEV_WALLETS="true")
    assert wallets.returncode != 0 and "CHAIN_DEV_WALLETS" in wallets.stderr


def test_production_with_secret_key_starts() -> None:
    got = probe(PRODUCTION="true", SECRET_KEY="x" * 50, ALLOWED_HOSTS="market.example")
    assert got["debug"] is False and got["dev_wallets"] is False
    assert got["hosts"] == ["market.example"]


def test_database_url_and_redis_url_select_the_full_profile() -> None:
    got = probe(DATABASE_URL="postgres://postgres@127.0.0.1:5432/test", REDIS_URL="redis://127.0.0.1:6379/0")
    assert got["engine"] == "django.db.backends.postgresql"
    assert got["db_name"] == "test"
    assert got["channels"] == "channels_redis.core.RedisChannelLayer"
    assert got["eager"] is False
    assert got["broker"] == "redis://127.0.0.1:6379/0"
