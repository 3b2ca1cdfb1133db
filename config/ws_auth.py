"""WebSocket authentication by API token: `Authorization: Token <key>` or `?token=<key>` (browsers cannot set
headers on a WebSocket), the account's default token or a named one (market/auth.py). A valid token sets
scope["user"]; a wrong one (unknown, revoked, or of a deactivated user) sets None (the consumers close), and so does
any token from an address that sent too many wrong ones (the API's auth_failure rate, config/throttling.py). A socket
opened with a token closes when the token is revoked (TokenRevocationMixin)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from django.contrib.auth.models import User

from config.throttling import FailureThrottle
from market.auth import token_group, token_user

CLOSE_REVOKED = 4401  # the close code of a socket whose token was revoked (the provider protocol's "unauthorized")


def _token_from(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            kind, _, key = value.decode("latin-1").partition(" ")
            if kind.lower() == "token" and key:
                return str(key).strip()
    keys = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return str(keys[0]) if keys else None


@database_sync_to_async  # type: ignore[untyped-decorator]  # channels ships no type hints
def _user_for(key: str, address: str) -> tuple[User | None, str | None]:
    """The token's user and its revocation group; None for a wrong token, or without a lookup once `address` failed
    too often (the API's limit, THROTTLE_RATES["auth_failure"], counted together with it)."""
    failures = FailureThrottle("auth_failure")
    if failures.blocked(address) is not None:
        return None, None
    found = token_user(key)
    if found is None:
        failures.record(address)
        return None, None
    user, token = found
    return user, token_group(token)


class TokenAuthMiddleware:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        key = _token_from(scope)
        if key is not None:
            client = scope.get("client") or ("", 0)
            user, group = await _user_for(key, str(client[0]))
            scope = {**scope, "user": user, "token_group": group}
        return await self.inner(scope, receive, send)


class TokenRevocationMixin:
    """For consumers: a socket opened with an API token joins the token's group and closes (4401) when the token is
    revoked (market/services/accounts.py); one opened by a session cookie has no token to lose."""

    scope: dict[str, Any]
    channel_layer: Any
    channel_name: str

    async def token_group_join(self) -> None:
        group = self.scope.get("token_group")
        if group and self.channel_layer is not None:
            await self.channel_layer.group_add(group, self.channel_name)

    async def token_group_leave(self) -> None:
        group = self.scope.get("token_group")
        if group and self.channel_layer is not None:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def auth_revoked(self, event: dict[str, Any]) -> None:
        await self.close(code=CLOSE_REVOKED)  # type: ignore[attr-defined]  # the consumer's own close
