"""Signing up, in and out on the marketplace's pages: a new account gets its password, its API token and the signup
grant at once; new accounts are limited per client address (each grant is free money); `next` never leaves the
site; a taken user name or a weak password comes back as a clear error with nothing created."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.authtoken.models import Token

from ledger import selectors as ledger_selectors
from market import services

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-enough-password-7"


def sign_up(client: Client, username: str, *, password: str = PASSWORD, address: str = "10.0.0.1", **extra: str) -> Any:
    form = {"username": username, "password1": password, "password2": password, **extra}
    return client.post("/signup/", form, REMOTE_ADDR=address)


def test_signing_up_opens_an_account_with_its_grant_and_token_and_signs_in(settings: Any) -> None:
    settings.SIGNUP_GRANT = 5_000
    client = Client()
    response = sign_up(client, "frank")
    assert response.status_code == 302 and response["Location"] == "/account/"
    user = User.objects.get(username="frank")
    assert user.check_password(PASSWORD)
    assert ledger_selectors.balances_of(user=user).available == 5_000
    assert Token.objects.filter(user=user).exists()
    page = client.get("/")
    assert page.status_code == 200 and page.context["user"] == user and b'id="sign-out"' in page.content


def test_a_taken_name_or_a_weak_password_creates_nothing(settings: Any) -> None:
    services.account_open(username="grace")
    minted = ledger_selectors.ledger_drift().minted
    taken = sign_up(Client(), "grace")
    assert taken.status_code == 400 and b"already exists" in taken.content
    weak = sign_up(Client(), "heidi", password="123")
    assert weak.status_code == 400 and b'role="alert"' in weak.content
    assert not User.objects.filter(username="heidi").exists()
    assert ledger_selectors.ledger_drift().minted == minted  # no grant for either


def test_new_accounts_are_limited_per_address(settings: Any) -> None:
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "sign_up": "2/hour"}
    assert [sign_up(Client(), f"user{i}").status_code for i in range(2)] == [302, 302]
    refused = sign_up(Client(), "user2")
    assert refused.status_code == 429 and 0 < int(refused["Retry-After"]) <= 3600
    assert b"Too many new accounts" in refused.content
    assert not User.objects.filter(username="user2").exists()
    assert sign_up(Client(), "user3", address="10.0.0.2").status_code == 302  # another address is not held up


def test_next_stays_on_the_site() -> None:
    assert sign_up(Client(), "ivan", next="/buy/")["Location"] == "/buy/"
    assert sign_up(Client(), "judy", next="https://evil.example/")["Location"] == "/account/"


def test_sign_in_and_out_on_the_site() -> None:
    User.objects.create_user("kim", password=PASSWORD)
    client = Client()
    assert client.get("/account/")["Location"] == "/signin/?next=/account/"
    response = client.post("/signin/", {"username": "kim", "password": PASSWORD, "next": "/buy/"})
    assert response.status_code == 302 and response["Location"] == "/buy/"
    assert client.get("/signin/")["Location"] == "/"  # signed in already: straight on
    assert client.post("/signout/")["Location"] == "/signin/"
    assert client.get("/account/").status_code == 302
    wrong = Client().post("/signin/", {"username": "kim", "password": "nope"})
    assert wrong.status_code == 200 and b"did not match" in wrong.content
