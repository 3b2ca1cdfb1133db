"""API tokens: named ones are made with their key shown once and stored as its SHA-256, work on the API and on
WebSockets like the default token, are refused at once when revoked (or their user deactivated), are at most
MAX_LIVE_TOKENS live per user, and stamp their last use at most once a minute. Owner / other user / anonymous."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token

from config.asgi import application
from config.errors import Conflict, InvalidInput, NotFound
from config.ws_auth import TokenAuthMiddleware
from market import services
from market.models import ApiToken, Job, LanguageModel
from market.services.accounts import KEEP_REVOKED_TOKENS, MAX_LIVE_TOKENS
from transport import protocol as p

pytestmark = pytest.mark.django_db(transaction=True)
WAIT = 5


def api(path: str, key: str | None) -> Any:
    headers = {"Authorization": f"Token {key}"} if key else {}
    return Client(headers=headers).get(path)


def socket_user(key: str) -> Any:
    """The user TokenAuthMiddleware puts in the scope for `?token=key` (None: refused)."""
    seen: dict[str, Any] = {}

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen["user"] = scope.get("user")
        await send({"type": "websocket.close", "code": 1000})

    async def connect() -> None:
        ws = WebsocketCommunicator(TokenAuthMiddleware(inner), f"/ws/?token={key}")
        await ws.connect(timeout=WAIT)
        await ws.disconnect()

    async_to_sync(connect)()
    return seen["user"]


def provider_socket(key: str) -> dict[str, Any]:
    """What the provider socket of config.asgi answers a hello sent with `key` (welcome, or the error and close)."""

    async def run() -> dict[str, Any]:
        headers = [(b"origin", b"http://127.0.0.1"), (b"authorization", f"Token {key}".encode())]
        ws = WebsocketCommunicator(application, "/ws/provider/", headers=headers)
        assert (await ws.connect(timeout=WAIT))[0]
        first: dict[str, Any] = {}
        hello = {"type": "hello", "protocol": 1, "name": "box", "kind": "headless", "backend": "cpu", "slots": 1}
        await ws.send_json_to({**hello, "memory_bytes": 1 << 30})
        first = await ws.receive_json_from(timeout=WAIT)
        if first["type"] == "error":
            first["close"] = (await ws.receive_output(timeout=WAIT))["code"]
        await ws.disconnect()
        return first

    return async_to_sync(run)()


def test_a_new_token_is_shown_once_and_stored_only_as_its_hash(alice: User) -> None:
    token, key = services.api_token_create(user=alice, name=" laptop ")
    assert token.name == "laptop" and key.startswith("cmk_") and len(key) > 40
    row = ApiToken.objects.get(pk=token.pk)
    assert row.key_sha256 == hashlib.sha256(key.encode()).hexdigest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM market_apitoken")
        assert key not in repr(cursor.fetchall())  # no column holds the key
    page = Client()
    page.force_login(alice)
    assert key not in page.get("/account/").content.decode()  # never shown again


def test_a_named_token_authenticates_the_api_and_a_websocket(alice: User) -> None:
    _, key = services.api_token_create(user=alice, name="agent")
    response = api("/api/account/", key)
    assert response.status_code == 200, response.content
    assert socket_user(key) == alice
    assert provider_socket(key)["type"] == "welcome"


def test_the_default_token_still_works_on_both(alice: User) -> None:
    key = Token.objects.get(user=alice).key
    assert api("/api/account/", key).status_code == 200
    assert socket_user(key) == alice


def test_a_revoked_token_is_refused_at_once_on_the_api_and_the_websocket(alice: User) -> None:
    token, key = services.api_token_create(user=alice, name="agent")
    assert api("/api/account/", key).status_code == 200
    services.api_token_revoke(user=alice, token_id=token.pk)
    response = api("/api/account/", key)
    assert response.status_code == 401 and response.json()["code"] == "authentication_failed", response.content
    assert socket_user(key) is None
    refused = provider_socket(key)
    assert (refused["code"], refused["close"]) == ("unauthorized", p.CLOSE_UNAUTHORIZED)


def test_a_revoked_default_token_is_refused_and_a_new_one_works(alice: User) -> None:
    old = Token.objects.get(user=alice).key
    services.default_token_revoke(user=alice)
    assert api("/api/account/", old).status_code == 401
    assert provider_socket(old)["close"] == p.CLOSE_UNAUTHORIZED  # the headless agent is told: AuthRefused
    new = services.default_token_create(user=alice)
    assert new != old and api("/api/account/", new).status_code == 200
    with pytest.raises(Conflict):
        services.default_token_create(user=alice)


def test_a_deactivated_users_tokens_are_refused(alice: User) -> None:
    _, key = services.api_token_create(user=alice, name="agent")
    default = Token.objects.get(user=alice).key
    User.objects.filter(pk=alice.pk).update(is_active=False)
    assert api("/api/account/", key).status_code == 401
    assert api("/api/account/", default).status_code == 401
    assert socket_user(key) is None and socket_user(default) is None


def test_another_users_token_cannot_be_revoked(alice: User, bob: User) -> None:
    token, key = services.api_token_create(user=alice, name="agent")
    with pytest.raises(NotFound):
        services.api_token_revoke(user=bob, token_id=token.pk)
    assert api("/api/account/", key).status_code == 200


def test_no_more_than_the_limit_of_live_tokens(alice: User) -> None:
    tokens = [services.api_token_create(user=alice, name=f"t{n}")[0] for n in range(MAX_LIVE_TOKENS)]
    with pytest.raises(Conflict) as refused:
        services.api_token_create(user=alice, name="one too many")
    assert refused.value.code == "too_many_tokens" and str(MAX_LIVE_TOKENS) in refused.value.message
    services.api_token_revoke(user=alice, token_id=tokens[0].pk)
    services.api_token_create(user=alice, name="after a revoke")  # a revoked one frees a place


@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
def test_a_token_needs_a_name_of_1_to_100_characters(alice: User, name: str) -> None:
    with pytest.raises(InvalidInput):
        services.api_token_create(user=alice, name=name)
    assert not ApiToken.objects.exists()


def test_revoked_tokens_kept_are_bounded(alice: User) -> None:
    for n in range(KEEP_REVOKED_TOKENS + 3):
        services.api_token_revoke(user=alice, token_id=services.api_token_create(user=alice, name=f"t{n}")[0].pk)
    live, _ = services.api_token_create(user=alice, name="live")
    kept = ApiToken.objects.filter(user=alice)
    assert kept.filter(revoked_at__isnull=False).count() == KEEP_REVOKED_TOKENS
    assert kept.filter(revoked_at__isnull=True).get() == live
    assert not kept.filter(name__in=["t0", "t1", "t2"]).exists()  # the oldest revoked ones went


def test_last_use_is_stamped_at_most_once_a_minute(alice: User) -> None:
    token, key = services.api_token_create(user=alice, name="agent")
    assert token.last_used_at is None
    api("/api/account/", key)
    first = ApiToken.objects.get(pk=token.pk).last_used_at
    assert first is not None
    api("/api/account/", key)
    assert ApiToken.objects.get(pk=token.pk).last_used_at == first  # within the minute: not written again
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now() - timedelta(minutes=2))
    socket_user(key)  # a minute later, a use on the WebSocket stamps it again
    again = ApiToken.objects.get(pk=token.pk).last_used_at
    assert again is not None and timezone.now() - again < timedelta(seconds=30)


def test_wrong_tokens_still_count_against_the_failure_limit(alice: User, settings: Any) -> None:
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "auth_failure": "2/minute"}
    token, key = services.api_token_create(user=alice, name="agent")
    services.api_token_revoke(user=alice, token_id=token.pk)
    assert api("/api/account/", key).status_code == 401
    assert api("/api/account/", "cmk_" + "0" * 48).status_code == 401
    assert api("/api/account/", Token.objects.get(user=alice).key).status_code == 429  # blocked before the lookup


@pytest.mark.parametrize("kind", ["named", "default"])
def test_revoking_a_token_closes_the_sockets_it_opened(alice: User, kind: str) -> None:
    """A stolen token stops at once: the provider socket and the job stream it opened close with 4401, while a socket
    opened with another of the user's tokens stays open."""
    if kind == "named":
        token, key = services.api_token_create(user=alice, name="stolen")
    else:
        key = Token.objects.get(user=alice).key
    _, other = services.api_token_create(user=alice, name="kept")
    model = LanguageModel.objects.create(name="tiny", quant="f32", config={"n_layers": 2}, tokenizer_sha256="0" * 64)
    job = Job.objects.create(buyer=alice, model=model, messages=[], max_new_tokens=1, max_price=1)

    async def run() -> None:
        origin = (b"origin", b"http://127.0.0.1")
        provider = WebsocketCommunicator(
            application, "/ws/provider/", headers=[origin, (b"authorization", f"Token {key}".encode())]
        )
        stream = WebsocketCommunicator(application, f"/ws/jobs/{job.pk}/?token={key}", headers=[origin])
        kept = WebsocketCommunicator(
            application, "/ws/provider/", headers=[origin, (b"authorization", f"Token {other}".encode())]
        )
        for ws in (provider, stream, kept):
            assert (await ws.connect(timeout=WAIT))[0]
        assert (await stream.receive_json_from(timeout=WAIT))["type"] == "snapshot"
        if kind == "named":
            await sync_to_async(services.api_token_revoke)(user=alice, token_id=token.pk)
        else:
            await sync_to_async(services.default_token_revoke)(user=alice)
        for ws in (provider, stream):
            closed = await ws.receive_output(timeout=WAIT)
            assert closed == {"type": "websocket.close", "code": p.CLOSE_UNAUTHORIZED}
        await kept.send_json_to(
            {
                "type": "hello",
                "protocol": 1,
                "name": "box",
                "kind": "headless",
                "backend": "cpu",
                "slots": 1,
                "memory_bytes": 1 << 30,
            }
        )
        assert (await kept.receive_json_from(timeout=WAIT))["type"] == "welcome"
        for ws in (provider, stream, kept):
            await ws.disconnect()

    async_to_sync(run)()
