"""Providers' earnings stay pending through the challenge window; the periodic task releases them once."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from pytest_django.fixtures import Settings

from config.celery import app
from ledger import services, tasks
from ledger.models import Account, PendingRelease, Transaction

if TYPE_CHECKING:  # the fixtures' types (pytest loads conftest itself; never imported at run time)
    from tests.ledger.conftest import Books

Kind = Account.Kind
SECOND = timedelta(seconds=1)

pytestmark = pytest.mark.django_db


def _settle(buyer: User, payouts: list[tuple[User, int]], job_ref: str = "j1") -> datetime:
    """Escrow and settle a job; returns when its challenge window closes."""
    services.escrow_for_job(user=buyer, amount=2_000, job_ref=job_ref)
    services.settle_job(job_ref=job_ref, buyer=buyer, payouts=payouts, fee=10)
    return PendingRelease.objects.filter(job_ref=job_ref).latest("pk").release_after


def test_the_window_lasts_the_configured_time(alice: User, bob: User, settings: Settings) -> None:
    settings.CHALLENGE_WINDOW_SECONDS = 600
    start = timezone.now()
    closes = _settle(alice, [(bob, 700)])
    assert start + timedelta(seconds=600) <= closes <= timezone.now() + timedelta(seconds=600)


def test_nothing_is_released_before_the_window_closes(alice: User, bob: User, books: Books) -> None:
    closes = _settle(alice, [(bob, 700)])
    before = books.state()
    assert services.release_due_earnings(now=closes - SECOND) == 0
    assert books.state() == before
    assert books.balance(bob, Kind.PROVIDER_PENDING) == 700


def test_earnings_are_released_after_the_window_and_only_once(
    alice: User, bob: User, carol: User, books: Books
) -> None:
    closes = _settle(alice, [(bob, 700), (carol, 200)])
    assert services.release_due_earnings(now=closes) == 2
    assert books.balance(bob, Kind.PROVIDER_PENDING) == 0
    assert books.balance(bob, Kind.PROVIDER_AVAILABLE) == 700
    assert books.balance(carol, Kind.PROVIDER_AVAILABLE) == 200
    released = books.state()
    assert services.release_due_earnings(now=closes + SECOND) == 0
    assert books.state() == released
    assert Transaction.objects.filter(kind=Transaction.Kind.RELEASE).count() == 2


def test_the_task_releases_due_earnings_and_is_safe_to_run_twice(
    alice: User, bob: User, books: Books, settings: Settings
) -> None:

    settings.CHALLENGE_WINDOW_SECONDS = 0
    _settle(alice, [(bob, 700)])
    assert tasks.release_due_earnings.apply().get() == 1
    after_once = books.state()
    assert tasks.release_due_earnings.apply().get() == 0
    assert books.state() == after_once
    assert books.balance(bob, Kind.PROVIDER_AVAILABLE) == 700


def test_the_release_task_is_on_the_beat_schedule(settings: Settings) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["ledger.release_due_earnings"]
    assert entry["task"] == tasks.release_due_earnings.name
    assert entry["task"] in app.tasks
    assert 0 < float(entry["schedule"]) <= 3600


def test_earnings_on_hold_stay_pending_past_the_window(alice: User, bob: User, books: Books) -> None:
    closes = _settle(alice, [(bob, 700)])
    assert services.set_earnings_hold(job_ref="j1", on_hold=True) == 1
    assert services.release_due_earnings(now=closes + timedelta(days=30)) == 0
    assert books.balance(bob, Kind.PROVIDER_PENDING) == 700
    services.set_earnings_hold(job_ref="j1", on_hold=False)
    assert services.release_due_earnings(now=closes) == 1
    assert books.balance(bob, Kind.PROVIDER_AVAILABLE) == 700


def test_released_earnings_pay_for_the_providers_own_jobs(alice: User, bob: User, books: Books) -> None:
    closes = _settle(alice, [(bob, 700)])
    services.release_due_earnings(now=closes)
    services.escrow_for_job(user=bob, amount=700, job_ref="bob-buys")
    assert books.balance(bob, Kind.PROVIDER_AVAILABLE) == 0
    assert books.balance(bob, Kind.USER_ESCROW) == 700
