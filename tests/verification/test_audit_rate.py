"""Random audits (verification/services/audits.py): the rate a provider is audited at (never below the floor, the
newcomer's rate until a clean record, falling as 1/N after it, back up for good after a failure, and never so low
that cheating pays given the slash and the pay at stake), and the draw after a settled job: at most one audit per
job, with the operating system's randomness, so its frequency is checked over many draws."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ledger.models import PendingRelease
from market.models import Job, Provider
from verification.models import Dispute
from verification.services import audits

if TYPE_CHECKING:  # the fixtures' types (pytest loads conftest itself)
    from tests.verification.conftest import Serve

FLOOR, NEW, TRUST_AFTER, SLASH = 50, 500, 10, 1_000_000
MAX_AMOUNT = 10**15  # ledger.services.MAX_AMOUNT
# Up to here the float quotient in audit_permille rounds up exactly: a non-integer 2000·pay/(slash+pay) is at least
# 1/(2·10^12) above the integer below it, far more than the float's half-ulp near 1000 (about 6·10^-14).
EXACT_UP_TO = 10**12


@pytest.fixture(autouse=True)
def _rates(settings: Any) -> None:
    settings.AUDIT_FLOOR_PERMILLE = FLOOR
    settings.AUDIT_NEW_PERMILLE = NEW
    settings.AUDIT_TRUST_AFTER = TRUST_AFTER
    settings.SLASH_AMOUNT = SLASH


def record(clean_streak: int = 0, audits_failed: int = 0) -> Provider:
    """A provider's record as the verdicts leave it (unsaved: the rate reads only these fields)."""
    return Provider(name="p", clean_streak=clean_streak, audits_failed=audits_failed, audits_passed=clean_streak)


def test_a_newcomer_is_audited_at_the_newcomer_rate() -> None:
    assert audits.audit_permille(record(), pay=0) == NEW


@pytest.mark.parametrize(
    ("streak", "permille"),
    [(1, NEW), (TRUST_AFTER - 1, NEW), (TRUST_AFTER, 100), (16, 62), (19, 52), (20, FLOOR), (10_000, FLOOR)],
)
def test_the_rate_falls_as_one_over_n_after_a_clean_record_but_never_below_the_floor(
    streak: int, permille: int
) -> None:
    assert audits.audit_permille(record(streak), pay=0) == permille


@pytest.mark.parametrize("streak", [0, TRUST_AFTER, 1_000])
def test_after_a_failure_the_newcomer_rate_is_back_for_good(streak: int) -> None:
    assert audits.audit_permille(record(streak, audits_failed=1), pay=0) == NEW


def test_the_floor_rules_when_it_is_above_every_other_term(settings: Any) -> None:
    settings.AUDIT_FLOOR_PERMILLE = 600
    assert audits.audit_permille(record(), pay=0) == 600
    assert audits.audit_permille(record(1_000), pay=0) == 600


@pytest.mark.parametrize(
    ("pay", "slash", "permille"),
    [
        (100, 1_000, 182),  # ceil(2000 · 100 / 1100): a trusted provider's 50 is not enough
        (1_000, 1_000, 1_000),  # the pay as large as the slash: every job is checked
        (1, SLASH, FLOOR),  # next to nothing at stake: the record decides
        (-5, 1_000, FLOOR),  # a negative pay counts as none
        (10, 0, 1_000),  # no slash configured counts as 1: nothing deters but certainty
    ],
)
def test_the_deterrence_term_keeps_cheating_from_paying(settings: Any, pay: int, slash: int, permille: int) -> None:
    settings.SLASH_AMOUNT = slash
    assert audits.audit_permille(record(1_000), pay=pay) == permille


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    pay=st.integers(min_value=-10, max_value=EXACT_UP_TO),
    slash=st.integers(min_value=0, max_value=EXACT_UP_TO),
    streak=st.integers(min_value=0, max_value=100_000),
    failed=st.integers(min_value=0, max_value=3),
)
def test_cheating_never_pays_and_the_rate_stays_within_floor_and_certainty(
    pay: int, slash: int, streak: int, failed: int
) -> None:
    """p · (slash + pay) ≥ 2 · pay in exact integers: caught with probability p, a cheat loses the slash and the pay
    it skipped the work for; and the rate is a permille between the floor and 1000. (The autouse `_rates` fixture's
    override is active here, so what is set on django.conf.settings below is undone with it.)"""
    django_settings.SLASH_AMOUNT = slash
    permille = audits.audit_permille(record(streak, failed), pay=pay)
    assert FLOOR <= permille <= 1_000
    stake, gain = max(slash, 1), max(pay, 0)
    assert permille == 1_000 or permille * (stake + gain) >= audits.DETERRENCE_MARGIN * 1_000 * gain
    assert permille >= (NEW if failed or streak < TRUST_AFTER else max(FLOOR, 1_000 // max(streak, 1)))


def test_the_deterrence_bound_is_exact_even_at_the_largest_amounts(settings: Any) -> None:
    pay, slash = 439_668_705_790_486, 956_104_963_385_660
    settings.SLASH_AMOUNT = slash
    permille = audits.audit_permille(record(1_000), pay=pay)
    assert permille * (slash + pay) >= audits.DETERRENCE_MARGIN * 1_000 * pay


# --- the draw after a settled job ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_certain_draw_opens_one_audit_per_job_and_holds_its_earnings(
    serve: Serve, alice: User, settings: Any
) -> None:
    settings.AUDIT_NEW_PERMILLE = 1_000
    job = serve(alice).job
    dispute = audits.job_audit_draw(job_id=job.pk)
    assert dispute is not None and (dispute.kind, dispute.state, dispute.job_id) == ("audit", "open", job.pk)
    assert PendingRelease.objects.filter(job_ref=f"job-{job.pk}", on_hold=True).count() == 2
    assert audits.job_audit_draw(job_id=job.pk) is None, "drawn once per job"
    assert Dispute.objects.count() == 1


@pytest.mark.django_db
def test_no_audit_is_drawn_for_a_job_not_settled_or_not_recorded(serve: Serve, alice: User, settings: Any) -> None:
    settings.AUDIT_NEW_PERMILLE = 1_000
    unrecorded = serve(alice, transcript=False).job
    assert audits.job_audit_draw(job_id=unrecorded.pk) is None
    Job.objects.filter(pk=unrecorded.pk).update(settled_at=None)
    assert audits.job_audit_draw(job_id=unrecorded.pk) is None
    assert not Dispute.objects.exists()


@pytest.mark.django_db
def test_the_draw_audits_a_job_as_often_as_its_providers_rates_say(serve: Serve, alice: User, settings: Any) -> None:
    """Two providers at 250‰ each: a job is audited with probability 1 − 0.75² = 0.4375. Over N draws the count
    lies within five standard deviations of N · 0.4375 (a false alarm about once in 1.7 million runs)."""
    settings.AUDIT_NEW_PERMILLE = 250
    settings.AUDIT_FLOOR_PERMILLE = 0
    settings.SLASH_AMOUNT = MAX_AMOUNT  # the deterrence term is then 1‰ for this job's small pay
    job = serve(alice).job
    assert {audits.audit_permille(p, pay=1_064) for p in Provider.objects.all()} == {250}
    n, p = 300, 1 - 0.75**2
    audited = 0
    for _ in range(n):
        dispute = audits.job_audit_draw(job_id=job.pk)
        if dispute is not None:
            audited += 1
            dispute.delete()  # so the next draw is a fresh one
    spread = 5 * math.sqrt(n * p * (1 - p))
    assert n * p - spread <= audited <= n * p + spread, audited
