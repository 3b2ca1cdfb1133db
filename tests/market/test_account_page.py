"""The account page: its balances are the ledger's (the same as GET /api/account/), the chain's state is shown as
"no chain" when none is configured, and API tokens are made (key shown once) and revoked by CSRF-checked forms,
only the owner's. Owner / other user / anonymous."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.authtoken.models import Token

from ledger import selectors as ledger_selectors
from ledger import services as ledger_services
from market import services
from market.models import ApiToken, LanguageModel
from market.services.accounts import MAX_LIVE_TOKENS

pytestmark = pytest.mark.django_db


def signed_in(user: User, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def text_of(html: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}"[^>]*>(.*?)</', html, re.S)
    assert found, f"#{element_id} is missing"
    return re.sub(r"<[^>]+>", "", found.group(1)).strip()


def test_the_balances_are_the_ledgers_after_a_grant_and_a_job_escrow(alice: User, model: LanguageModel) -> None:
    job = services.job_create(
        buyer=alice,
        model=model,
        messages=[{"role": "user", "content": "hello there"}],
        max_new_tokens=8,
        temperature=Decimal(0),
        top_p=Decimal(1),
        seed=1,
    )
    ledger_services.settle_job(job_ref=f"job-{job.pk}", buyer=alice, payouts=[(alice, 7)], fee=0)
    balances = ledger_selectors.balances_of(user=alice)
    assert balances.available > 0 and balances.pending == 7  # a grant, and a payout as a provider
    client = signed_in(alice)
    html = client.get("/account/").content.decode()
    api = Client(headers={"Authorization": f"Token {Token.objects.get(user=alice).key}"}).get("/api/account/").json()
    for element, field in [("available", "available"), ("escrow", "escrow"), ("pending", "pending")]:
        assert text_of(html, f"balance-{element}") == str(getattr(balances, field)) == str(api[field])
    assert text_of(html, "balance-released") == str(balances.earnings) == str(api["earnings"])


def test_the_escrow_of_an_open_job_shows(alice: User) -> None:
    ledger_services.escrow_for_job(user=alice, amount=1234, job_ref="job-99")
    html = signed_in(alice).get("/account/").content.decode()
    assert text_of(html, "balance-escrow") == "1234"
    assert text_of(html, "balance-available") == str(ledger_selectors.balances_of(user=alice).available)


def test_without_a_chain_the_page_says_so_and_shows_no_numbers(alice: User, settings: Any) -> None:
    settings.CHAIN_RPC_URL = ""
    html = signed_in(alice).get("/account/").content.decode()
    assert "runs without a chain" in text_of(html, "chain-state")
    for element in ("chain-balance", "chain-stake", "chain-unbonding", "chain-slashed"):
        assert text_of(html, element) == "—"


def test_a_token_made_on_the_page_is_shown_once_and_works(alice: User) -> None:
    client = signed_in(alice, enforce_csrf_checks=True)
    page = client.get("/account/")
    csrf = page.cookies["csrftoken"].value
    made = client.post("/account/", {"action": "create", "name": "laptop", "csrfmiddlewaretoken": csrf})
    assert made.status_code == 200 and "no-store" in made["Cache-Control"]
    key = text_of(made.content.decode(), "token-new")
    token = ApiToken.objects.get(user=alice)
    assert f'data-token-id="{token.pk}"' in made.content.decode()
    assert Client(headers={"Authorization": f"Token {key}"}).get("/api/account/").status_code == 200
    again = client.get("/account/").content.decode()
    assert key not in again and 'id="token-new"' not in again


def test_forms_without_the_csrf_token_are_refused(alice: User) -> None:
    client = signed_in(alice, enforce_csrf_checks=True)
    assert client.post("/account/", {"action": "create", "name": "laptop"}).status_code == 403
    assert not ApiToken.objects.exists()


def test_revoking_on_the_page_refuses_the_token_and_another_users_is_not_found(alice: User, carol: User) -> None:
    token, key = services.api_token_create(user=alice, name="agent")
    refused = signed_in(carol).post("/account/", {"action": "revoke", "token": str(token.pk)})
    assert refused.status_code == 404 and 'role="alert"' in refused.content.decode()
    assert Client(headers={"Authorization": f"Token {key}"}).get("/api/account/").status_code == 200
    done = signed_in(alice).post("/account/", {"action": "revoke", "token": str(token.pk)})
    assert done.status_code == 302
    assert Client(headers={"Authorization": f"Token {key}"}).get("/api/account/").status_code == 401
    html = signed_in(alice).get("/account/").content.decode()
    row = re.search(rf'<tr data-token-id="{token.pk}".*?</tr>', html, re.S)
    assert row and "revoked" in row.group(0) and "token-revoke" not in row.group(0)


def test_the_default_token_is_listed_revoked_and_made_again_once(alice: User) -> None:
    old = Token.objects.get(user=alice).key
    client = signed_in(alice)
    html = client.get("/account/").content.decode()
    assert 'data-token-id="default"' in html and old not in html  # listed, its key never shown
    assert client.post("/account/", {"action": "revoke", "token": "default"}).status_code == 302
    assert not Token.objects.filter(user=alice).exists()
    assert 'id="token-default-create"' in client.get("/account/").content.decode()
    made = client.post("/account/", {"action": "default-create"}).content.decode()
    new = text_of(made, "token-new")
    assert new == Token.objects.get(user=alice).key != old


def test_beyond_the_limit_the_page_shows_a_clear_error(alice: User) -> None:
    for n in range(MAX_LIVE_TOKENS):
        services.api_token_create(user=alice, name=f"t{n}")
    refused = signed_in(alice).post("/account/", {"action": "create", "name": "one more"})
    assert refused.status_code == 409
    assert "revoke one first" in text_of(refused.content.decode(), "token-error")
    assert ApiToken.objects.filter(user=alice).count() == MAX_LIVE_TOKENS


def test_an_anonymous_visitor_is_sent_to_sign_in() -> None:
    response = Client().get("/account/")
    assert response.status_code == 302 and "/signin/" in response["Location"]
