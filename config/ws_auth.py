"""WebSocket authentication by API token: `Authorization: Token <key>` or `?token=<key>` (browsers cannot set
headers on a WebSocket), the account's default token or a named one (market/auth.py). A valid token sets
scope["user"]; a wrong one (unknown, revoked, or of a deactivated user) sets None (the consumers close), and so does
any token from an address that sent too many wrong ones (the API's auth_failure rate, config/throttling.py)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from django.contrib.auth.models import User

from config.throttling import FailureThrottle
from market.auth import token_user


def _token_from(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            kind, _, key = value.decode("latin-1").partition(" ")
            if kind.lower() == "token" and key:
                return str(key).strip()
    keys = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return str(keys[0]) if keys else None


@database_sync_to_async  # type: ignore[untyped-decorator]  # channels ships no type hints
def _user_for(key: str, address: str) -> User | None:
    """The token's user; None for a wrong token, or without a lookup once `address` failed too often (the API's
    limit, THROTTLE_RATES["auth_failure"], counted together with it)."""
    failures = FailureThrottle("auth_failure")
    if failures.blocked(address) is not None:
        return None
    found = token_user(key)
    if found is None:
        failures.record(address)
        return None
    return found[0]


class TokenAuthMiddleware:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        key = _token_from(scope)
        if key is not None:
            client = scope.get("client") or ("", 0)
            scope = {**scope, "user": await _user_for(key, str(client[0]))}
        return await self.inner(scope, receive, send)
