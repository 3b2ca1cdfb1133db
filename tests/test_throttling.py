"""Rate limits: API use per account and per address, guessed tokens per address, failed sign-ins on the provider
tab per address and per user name. Over the limit: 429 with Retry-After, JSON `{code, message}` on the API."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.core.management import call_command
from django.test import Client
from rest_framework.authtoken.models import Token

from config.asgi import application
from market import services

pytestmark = pytest.mark.django_db


@pytest.fixture
def rates(settings: Any) -> dict[str, str | None]:
    settings.THROTTLE_RATES = {"user": "5/minute", "anon": "3/minute", "auth_failure": "4/minute", "sign_in": "3/hour"}
    rates: dict[str, str | None] = settings.THROTTLE_RATES
    return rates


def token_of(username: str) -> str:
    user = services.account_open(username=username)[0]
    return str(Token.objects.get_or_create(user=user)[0].key)


def get(path: str, token: str | None = None, address: str = "10.0.0.1") -> Any:
    headers = {"Authorization": f"Token {token}"} if token else {}
    return Client(headers=headers, REMOTE_ADDR=address).get(path)


def assert_throttled(response: Any) -> None:
    assert response.status_code == 429, response.content[:300]
    assert response.json()["code"] == "throttled" and "Expected available in" in response.json()["message"]
    assert 0 < int(response["Retry-After"]) <= 60


def test_token_use_is_limited_per_account(rates: dict[str, str | None]) -> None:
    alice, bob = token_of("alice"), token_of("bob")
    assert [get("/api/account/", alice).status_code for _ in range(5)] == [200] * 5
    assert_throttled(get("/api/account/", alice))
    assert_throttled(get("/api/models/", alice, address="10.0.0.2"))  # per account, whatever the address
    assert get("/api/account/", bob).status_code == 200  # another account is not held up


def test_anonymous_requests_are_limited_per_address(rates: dict[str, str | None]) -> None:
    """Only what anyone may read counts (the schema): elsewhere an anonymous request is a 401 before throttles."""
    assert [get("/api/schema/").status_code for _ in range(3)] == [200] * 3
    assert_throttled(get("/api/schema/"))
    assert get("/api/schema/", address="10.0.0.2").status_code == 200


def test_guessing_tokens_is_limited_per_address_before_the_lookup(rates: dict[str, str | None]) -> None:
    """A wrong token fails authentication (401) before any throttle would run, so failures are counted apart; over
    the rate even the right token from that address waits, and other addresses are not held up."""
    alice = token_of("alice")
    wrong = [get("/api/account/", f"{n:040x}").json()["code"] for n in range(4)]
    assert wrong == ["authentication_failed"] * 4
    assert_throttled(get("/api/account/", "f" * 40))
    assert_throttled(get("/api/account/", alice))
    assert get("/api/account/", alice, address="10.0.0.2").status_code == 200


def test_rates_turned_off_do_not_limit(rates: dict[str, str | None], settings: Any) -> None:
    settings.THROTTLE_RATES = {**rates, "user": None}
    alice = token_of("alice")
    assert {get("/api/account/", alice).status_code for _ in range(8)} == {200}


def sign_in(password: str, *, username: str = "erin", address: str = "10.0.0.1") -> Any:
    return Client(REMOTE_ADDR=address).post("/provide/login/", {"username": username, "password": password})


def test_failed_sign_ins_are_limited_per_address_and_per_user_name(rates: dict[str, str | None]) -> None:
    call_command("issue_token", "erin", "--create", "--password", "a-long-tab-password")
    assert [sign_in("wrong").status_code for _ in range(3)] == [200] * 3
    refused = sign_in("a-long-tab-password")  # even the right password waits: it is not checked at all
    assert refused.status_code == 429 and b"Too many failed sign-ins" in refused.content
    assert refused["Content-Type"].startswith("text/html") and 3000 < int(refused["Retry-After"]) <= 3600
    # Another address trying the same account is held up too (per user name) ...
    assert sign_in("a-long-tab-password", address="10.0.0.2").status_code == 429
    # ... while another account from another address signs in.
    call_command("issue_token", "fay", "--create", "--password", "another-tab-password")
    assert sign_in("another-tab-password", username="fay", address="10.0.0.3").status_code == 302


def test_successful_sign_ins_are_not_counted(rates: dict[str, str | None]) -> None:
    call_command("issue_token", "erin", "--create", "--password", "a-long-tab-password")
    assert {sign_in("a-long-tab-password").status_code for _ in range(5)} == {302}


async def provider_socket_code(token: str) -> str:
    """The provider socket's first answer to a token: `welcome`-bound (no error yet) or the error's code."""
    ws = WebsocketCommunicator(application, "/ws/provider/", headers=[(b"origin", b"http://127.0.0.1")])
    ws.scope["query_string"] = f"token={token}".encode()
    ws.scope["client"] = ("10.0.0.1", 4000)
    assert (await ws.connect(timeout=5))[0]
    if await ws.receive_nothing(timeout=0.3):
        await ws.disconnect()
        return "accepted"
    code: str = (await ws.receive_json_from(timeout=5))["code"]
    await ws.disconnect()
    return code


@pytest.mark.django_db(transaction=True)
def test_guessing_tokens_on_the_websocket_counts_with_the_api(rates: dict[str, str | None]) -> None:
    alice = token_of("alice")
    assert async_to_sync(provider_socket_code)(alice) == "accepted"
    for n in range(2):
        assert async_to_sync(provider_socket_code)(f"{n:040x}") == "unauthorized"
    for n in range(2):  # the API's failures from that address count too
        assert get("/api/account/", f"{n + 2:040x}").status_code == 401
    assert async_to_sync(provider_socket_code)(alice) == "unauthorized"  # the right token, not looked up
