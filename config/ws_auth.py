"""WebSocket authentication by API token: `Authorization: Token <key>` or `?token=<key>` (browsers cannot set
headers on a WebSocket). A valid token sets scope["user"]; otherwise the session user (if any) stays."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token


def _token_from(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            kind, _, key = value.decode("latin-1").partition(" ")
            if kind.lower() == "token" and key:
                return str(key).strip()
    keys = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return str(keys[0]) if keys else None


@database_sync_to_async  # type: ignore[untyped-decorator]  # channels ships no type hints
def _user_for(key: str) -> User | None:
    token = Token.objects.select_related("user").filter(key=key).first()
    return token.user if token is not None and token.user.is_active else None


class TokenAuthMiddleware:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        key = _token_from(scope)
        if key is not None:
            scope = {**scope, "user": await _user_for(key)}
        return await self.inner(scope, receive, send)
