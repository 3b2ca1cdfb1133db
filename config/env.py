"""Typed readers for settings that come from the environment.

Each helper returns the default when the variable is unset or empty, so a fresh machine runs with local defaults.
A value that is set but malformed raises ImproperlyConfigured instead of being silently replaced by the default.
"""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(name: str, default: str = "") -> str:
    value = _raw(name)
    return default if value is None else value


def env_bool(name: str, default: bool = False) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use one of: true/false, 1/0, yes/no, on/off)")


def env_int(name: str, default: int = 0) -> int:
    value = _raw(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None


def env_list(name: str, default: list[str] | None = None, sep: str = ",") -> list[str]:
    value = _raw(name)
    if value is None:
        return list(default) if default is not None else []
    return [item.strip() for item in value.split(sep) if item.strip()]
