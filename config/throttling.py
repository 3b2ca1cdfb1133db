"""Rate limits (THROTTLE_RATES in settings, "N/second|minute|hour|day", or None for no limit).

- `user`: every API request of an account (token or session); `anon`: per client address, what anyone may read
  (the schema; the rest of the API answers an anonymous request 401 before any throttle).
- `auth_failure`: failed token lookups per client address. A guessed token never reaches DRF's throttles
  (authentication fails first, with a 401), so `TokenAuthentication` counts its failures itself and, over the
  rate, answers 429 before it looks the next token up.
- `sign_in`: failed sign-ins on the provider page, per client address and per user name (worker_web/views.py).

Counts live in the default cache: per process on the embedded profile, shared through Redis on the full one.
A 429 carries Retry-After; on the API its body is `{code: "throttled", message}` like every other error."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import authentication, exceptions, throttling
from rest_framework.request import Request


class _SettingsRate:
    """Read the rate from settings.THROTTLE_RATES when the throttle is made, not when DRF was imported."""

    scope: str

    def get_rate(self) -> str | None:
        rate: str | None = settings.THROTTLE_RATES.get(self.scope)
        return rate


class UserRateThrottle(_SettingsRate, throttling.UserRateThrottle):  # type: ignore[misc]  # DRF ships no type hints
    scope = "user"


class AnonRateThrottle(_SettingsRate, throttling.AnonRateThrottle):  # type: ignore[misc]  # DRF ships no type hints
    scope = "anon"


class FailureThrottle(_SettingsRate, throttling.SimpleRateThrottle):  # type: ignore[misc]  # DRF ships no type hints
    """Counts only failures, under `scope`, per key: `blocked` says how long to wait (None: go ahead), `record`
    counts one more. The window slides like DRF's own throttles."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        super().__init__()

    def blocked(self, ident: str) -> float | None:
        if self.rate is None:
            return None
        self._load(ident)
        if len(self.history) < self.num_requests:
            return None
        wait: float | None = self.wait()
        return wait

    def record(self, ident: str) -> None:
        if self.rate is None:
            return
        self._load(ident)
        self.history.insert(0, self.now)
        self.cache.set(self.key, self.history, self.duration)

    def _load(self, ident: str) -> None:
        self.key = self.cache_format % {"scope": self.scope, "ident": ident}
        self.now = self.timer()
        self.history = [t for t in self.cache.get(self.key, []) if t > self.now - self.duration]

    def client(self, request: Any) -> str:
        """The client's address, as DRF's throttles see it (NUM_PROXIES decides whether X-Forwarded-For counts)."""
        ident: str = self.get_ident(request)
        return ident


class TokenAuthentication(authentication.TokenAuthentication):  # type: ignore[misc]  # DRF ships no type hints
    """DRF's token authentication, refusing an address that failed too often (429) before it looks a token up."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        if not authentication.get_authorization_header(request).lower().startswith(b"token "):
            return None  # no token offered: nothing to count
        failures = FailureThrottle("auth_failure")
        address = failures.client(request)
        if (wait := failures.blocked(address)) is not None:
            raise exceptions.Throttled(wait, detail="too many requests with a wrong token from this address.")
        try:
            user_and_token: tuple[Any, Any] | None = super().authenticate(request)
        except exceptions.AuthenticationFailed:
            failures.record(address)
            raise
        return user_and_token
