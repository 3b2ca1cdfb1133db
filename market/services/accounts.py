"""Opening a market account: the user, its API token, and the signup grant (unless CONTRIBUTE_TO_USE is on); the
account's API tokens: named ones made and revoked on the account page, and the default one revoked or made again."""

from __future__ import annotations

import functools
import secrets

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from rest_framework.authtoken.models import Token

from config.errors import Conflict, InvalidInput, NotFound
from ledger import services as ledger_services
from market.auth import key_sha256, token_group
from market.models import ApiToken

MAX_LIVE_TOKENS = 20  # named tokens not revoked, per user (the default token is not counted)
KEEP_REVOKED_TOKENS = 50  # revoked rows kept per user for the page's list: making and revoking cannot grow it forever
KEY_PREFIX = "cmk_"  # tells a named token's key apart from a default one (40 hex digits) when people see it


def account_open(*, username: str) -> tuple[User, str]:
    """The user named so and its API token, creating both (with the signup grant) if the user is new."""
    with transaction.atomic():
        user, created = User.objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
            ledger_services.grant_signup_bonus(user=user)
        token, _ = Token.objects.get_or_create(user=user)
    return user, token.key


def account_sign_up(*, username: str, password: str) -> User:
    """A new user who signed up on the site: its password, its API token and the signup grant, all or nothing."""
    with transaction.atomic():
        user = User.objects.create_user(username=username, password=password)
        ledger_services.grant_signup_bonus(user=user)
        Token.objects.create(user=user)
    return user


def api_token_create(*, user: User, name: str) -> tuple[ApiToken, str]:
    """A new named token and its key, which exists only in this return value: the row keeps its SHA-256."""
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidInput("name the token (1 to 100 characters)", code="invalid_token_name")
    key = KEY_PREFIX + secrets.token_hex(24)
    with transaction.atomic():
        # The user's row lock serializes concurrent creations, so the count below cannot be passed by a race.
        User.objects.select_for_update().filter(pk=user.pk).first()
        if ApiToken.objects.filter(user=user, revoked_at__isnull=True).count() >= MAX_LIVE_TOKENS:
            raise Conflict(
                f"you have {MAX_LIVE_TOKENS} live tokens, the most an account may have: revoke one first",
                code="too_many_tokens",
            )
        token = ApiToken.objects.create(user=user, name=name, key_sha256=key_sha256(key))
        revoked = ApiToken.objects.filter(user=user, revoked_at__isnull=False)
        old = revoked.order_by("-revoked_at", "-pk").values_list("pk", flat=True)[KEEP_REVOKED_TOKENS:]
        ApiToken.objects.filter(pk__in=list(old)).delete()
    return token, key


def api_token_revoke(*, user: User, token_id: int) -> ApiToken:
    """Revoke one of the user's named tokens (refused from its next request on, and the sockets it opened closed);
    another user's is NotFound."""
    with transaction.atomic():
        token = ApiToken.objects.select_for_update().filter(pk=token_id, user=user).first()
        if token is None:
            raise NotFound(f"token {token_id} not found", code="token_not_found")
        if token.revoked_at is None:
            token.revoked_at = timezone.now()
            token.save(update_fields=["revoked_at"])
            transaction.on_commit(functools.partial(_close_sockets, token_group(token)), robust=True)
    return token


def default_token_revoke(*, user: User) -> None:
    """Revoke the account's default token (the one `manage.py issue_token` prints): refused from its next request on,
    and the sockets it opened closed."""
    token = Token.objects.filter(user=user).first()
    if token is None or not Token.objects.filter(pk=token.pk).delete()[0]:
        raise NotFound("the default token is already revoked", code="token_not_found")
    transaction.on_commit(functools.partial(_close_sockets, token_group(token)), robust=True)


def _close_sockets(group: str) -> None:
    """Close every WebSocket the revoked token opened (config/ws_auth.py's TokenRevocationMixin): a stolen token
    stops serving or streaming at once, not when its socket next reconnects."""
    async_to_sync(get_channel_layer().group_send)(group, {"type": "auth.revoked"})


def default_token_create(*, user: User) -> str:
    """A new default token after the old one was revoked; its key is returned once (DRF's authtoken keeps it)."""
    with transaction.atomic():
        User.objects.select_for_update().filter(pk=user.pk).first()
        if Token.objects.filter(user=user).exists():
            raise Conflict("the account has a default token: revoke it first", code="default_token_exists")
        token = Token.objects.create(user=user)
    key: str = token.key
    return key
