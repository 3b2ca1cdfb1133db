"""Issuing tokens: only the operator mints; new accounts get a signup grant unless CONTRIBUTE_TO_USE is on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.contrib.auth.models import AnonymousUser, User
from pytest_django.fixtures import Settings

from ledger import selectors, services
from ledger.errors import InsufficientFunds, OperatorOnly
from ledger.models import Account, PendingRelease

if TYPE_CHECKING:  # the fixtures' types (pytest loads conftest itself; never imported at run time)
    from tests.ledger.conftest import Books, MakeUser

Kind = Account.Kind
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db
def test_the_operator_mints_to_a_users_available_balance(operator: User, bob: User, books: Books) -> None:
    tx = services.mint(to_user=bob, amount=5_000, key="k1", by=operator)
    assert books.balance(bob, Kind.USER_AVAILABLE) == 5_000
    assert selectors.total_minted() == 5_000
    assert services.mint(to_user=bob, amount=5_000, key="k1", by=operator).pk == tx.pk
    assert selectors.total_minted() == 5_000


@pytest.mark.django_db
def test_nobody_else_mints(make_user: MakeUser, bob: User, books: Books) -> None:
    someone = make_user()
    retired = make_user(staff=True)
    retired.is_active = False
    retired.save(update_fields=["is_active"])
    before = books.state()
    for who in (someone, bob, retired, AnonymousUser()):
        with pytest.raises(OperatorOnly) as caught:
            services.mint(to_user=bob, amount=5_000, key=f"k:{who.pk}", by=who)  # type: ignore[arg-type]
        assert caught.value.status == 403
    assert books.state() == before


@pytest.mark.django_db
def test_without_contribute_to_use_a_new_account_gets_the_signup_grant_once(
    make_user: MakeUser, books: Books, settings: Settings
) -> None:
    settings.CONTRIBUTE_TO_USE = False
    settings.SIGNUP_GRANT = 2_500
    newbie = make_user()
    assert services.grant_signup_bonus(user=newbie) is not None
    assert services.grant_signup_bonus(user=newbie) is not None  # replays the first grant
    assert books.balance(newbie, Kind.USER_AVAILABLE) == 2_500
    services.escrow_for_job(user=newbie, amount=2_000, job_ref="first-job")  # and can buy at once
    assert books.balance(newbie, Kind.USER_ESCROW) == 2_000


@pytest.mark.django_db
def test_a_zero_signup_grant_grants_nothing(make_user: MakeUser, books: Books, settings: Settings) -> None:
    settings.CONTRIBUTE_TO_USE = False
    settings.SIGNUP_GRANT = 0
    assert services.grant_signup_bonus(user=make_user()) is None
    assert books.state().transactions == 0


@pytest.mark.django_db
def test_with_contribute_to_use_a_new_account_earns_by_providing_before_it_can_buy(
    make_user: MakeUser, alice: User, books: Books, settings: Settings
) -> None:

    settings.CONTRIBUTE_TO_USE = True
    settings.SIGNUP_GRANT = 2_500
    newbie = make_user()
    assert services.grant_signup_bonus(user=newbie) is None
    assert selectors.balances_of(user=newbie) == selectors.Balances()
    with pytest.raises(InsufficientFunds):
        services.escrow_for_job(user=newbie, amount=100, job_ref="too-early")
    # It provides for alice's job; the earnings become spendable when the challenge window closes.
    services.escrow_for_job(user=alice, amount=1_000, job_ref="alice-job")
    services.settle_job(job_ref="alice-job", buyer=alice, payouts=[(newbie, 300)], fee=30)
    with pytest.raises(InsufficientFunds):
        services.escrow_for_job(user=newbie, amount=100, job_ref="still-pending")
    closes = PendingRelease.objects.get(job_ref="alice-job").release_after
    assert services.release_due_earnings(now=closes) == 1
    services.escrow_for_job(user=newbie, amount=300, job_ref="now-it-buys")
    assert selectors.balances_of(user=newbie) == selectors.Balances(escrow=300)


def _settings_value(name: str, **env: str) -> str:
    """The value of a setting in a fresh process with only `env` set (the caller's own env stays out)."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    code = f"import django; django.setup(); from django.conf import settings; print(repr(settings.{name}))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**keep, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_contribute_to_use_is_off_by_default_and_read_from_the_environment() -> None:
    assert _settings_value("CONTRIBUTE_TO_USE") == "False"
    assert _settings_value("CONTRIBUTE_TO_USE", CONTRIBUTE_TO_USE="true") == "True"
    assert _settings_value("SIGNUP_GRANT", SIGNUP_GRANT="42") == "42"
