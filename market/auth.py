"""Authentication by API token, for the REST API (`Authorization: Token <key>`) and WebSockets (config/ws_auth.py).

Two kinds of token are accepted: the account's default token (DRF's authtoken, printed by `manage.py issue_token`)
and the named tokens made on the account page (ApiToken), which are stored as their SHA-256 only and looked up by
it, so no key is compared in the application and none is kept. A revoked token, or any token of a deactivated
user, is refused on its next request (nothing is cached), and the WebSockets it opened are closed (`token_group`)."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db.models import F, Q, QuerySet
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authtoken.models import Token

from config.throttling import TokenAuthentication as ThrottledTokenAuthentication
from market.models import ApiToken

LAST_USED_EVERY = timedelta(minutes=1)  # at most one write per token per minute for `last_used_at`


def key_sha256(key: str) -> str:
    """What a named token's row stores of its key (hex)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def token_user(key: str) -> tuple[User, ApiToken | Token] | None:
    """The active user a key belongs to, and its token row; None for an unknown, revoked or deactivated one."""
    named = ApiToken.objects.select_related("user").filter(key_sha256=key_sha256(key), revoked_at__isnull=True).first()
    if named is not None:
        if not named.user.is_active:
            return None
        _touch(named)
        return named.user, named
    default = Token.objects.select_related("user").filter(key=key).first()
    if default is None or not default.user.is_active:
        return None
    return default.user, default


def token_group(token: ApiToken | Token) -> str:
    """The channel-layer group of the WebSockets a token opened: revoking the token closes them all (4401)."""
    if isinstance(token, ApiToken):
        return f"api-token-{token.pk}"
    return f"api-token-default-{token.user_id}"  # one default token per user at a time


def _touch(token: ApiToken) -> None:
    """Stamp `last_used_at`, unless it was stamped within the last minute. The conditional UPDATE keeps concurrent
    requests from writing twice."""
    now = timezone.now()
    if token.last_used_at is not None and now - token.last_used_at < LAST_USED_EVERY:
        return
    stale = Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_EVERY)
    ApiToken.objects.filter(stale, pk=token.pk).update(last_used_at=now)


def api_tokens_of_user(*, user: User, limit: int = 100) -> QuerySet[ApiToken]:
    """The user's named API tokens, live ones first, then newest first (revoked ones stay listed); nobody else's."""
    return ApiToken.objects.filter(user=user).order_by(F("revoked_at").desc(nulls_first=True), "-pk")[:limit]


def default_token_of_user(*, user: User) -> Token | None:
    """The account's default API token (DRF's authtoken), None once revoked."""
    return Token.objects.filter(user=user).first()


class TokenAuthentication(ThrottledTokenAuthentication):
    """The API's token authentication: either kind of token, failures counted per address (config/throttling.py)."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        found = token_user(key)
        if found is None:
            raise exceptions.AuthenticationFailed("invalid or revoked token.")
        return found
