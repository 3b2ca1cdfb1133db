"""Verification's REST API (verification/apis.py): a buyer challenges its own finished job within the window with
the bond (402 short, 409 late, twice or with nothing to check, 404 for another buyer's job, 401 anonymous, and
nothing moves on any refusal), reads where its job's verification stands, and a provider reads its record."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from rest_framework.test import APIClient

from ledger import selectors as ledger_selectors
from ledger.models import Account, Entry, PendingRelease, Transaction
from market import services as market_services
from market.models import Job, LanguageModel
from verification.models import Dispute
from verification.services import disputes

if TYPE_CHECKING:  # the fixtures' types (pytest loads conftest itself)
    from tests.verification.conftest import Serve

pytestmark = pytest.mark.django_db

GRANT = 1_000_000  # settings.SIGNUP_GRANT
BOND = 50_000
WINDOW = 3_600


@pytest.fixture(autouse=True)
def _terms(settings: Any) -> None:
    settings.CHALLENGE_BOND = BOND
    settings.CHALLENGE_WINDOW_SECONDS = WINDOW


def api(user: User | None = None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def challenge(user: User | None, job: Job) -> Any:
    return api(user).post(f"/api/jobs/{job.pk}/challenge/")


def verification(user: User | None, job: Job) -> Any:
    return api(user).get(f"/api/jobs/{job.pk}/verification/")


def money() -> tuple[dict[tuple[int | None, str], int], int, int, int]:
    """Every non-zero balance, the number of transactions and entries, and the earnings on hold."""
    balances = {(a.owner_id, a.kind): a.balance for a in Account.objects.exclude(balance=0)}
    held = PendingRelease.objects.filter(on_hold=True).count()
    return balances, Transaction.objects.count(), Entry.objects.count(), held


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def assert_refused(response: Any, status: int, code: str) -> None:
    assert (response.status_code, response.json()["code"]) == (status, code), response.json()


# --- who may challenge -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("post", "/api/jobs/{id}/challenge/"), ("get", "/api/jobs/{id}/verification/"), ("get", "/api/provider/audits/")],
)
def test_anonymous_requests_are_401_and_move_nothing(serve: Serve, alice: User, method: str, path: str) -> None:
    job = serve(alice).job
    before = money()
    response = getattr(api(), method)(path.format(id=job.pk))
    assert_refused(response, 401, "not_authenticated")
    assert money() == before and not Dispute.objects.exists()


def test_another_buyers_job_is_404_like_a_missing_one(serve: Serve, alice: User, bob: User) -> None:
    job = serve(alice).job
    before = money()
    for response in (challenge(bob, job), verification(bob, job)):
        assert response.status_code == 404
        assert response.json() == {"code": "job_not_found", "message": f"job {job.pk} not found"}
    missing = Job(pk=job.pk + 1000)
    assert_refused(challenge(alice, missing), 404, "job_not_found")
    assert_refused(verification(alice, missing), 404, "job_not_found")
    assert money() == before and not Dispute.objects.exists()


# --- the challenge ---------------------------------------------------------------------------------------------


def test_a_challenge_holds_the_bond_and_the_jobs_earnings(
    serve: Serve, alice: User, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    job = serve(alice).job
    available = ledger_selectors.balances_of(user=alice).available
    with django_capture_on_commit_callbacks() as nudges:
        response = challenge(alice, job)
    assert response.status_code == 201, response.json()
    assert nudges, "the referee is nudged (and the job's stream told) once the challenge is committed, not before"
    body = response.json()
    assert (body["job"], body["state"], body["challenge_bond"]) == (job.pk, "checking", BOND)
    [dispute] = body["disputes"]
    stored = Dispute.objects.get()
    assert (dispute["id"], dispute["kind"], dispute["state"], dispute["bond"]) == (stored.pk, "challenge", "open", BOND)
    assert (stored.challenger, stored.bond) == (alice, BOND)
    assert ledger_selectors.balances_of(user=alice).available == available - BOND
    assert ledger_selectors.platform_balance(kind=Account.Kind.CHALLENGE_BONDS) == BOND
    assert PendingRelease.objects.filter(job_ref=f"job-{job.pk}", on_hold=True).count() == 2
    assert ledger_selectors.ledger_drift().ok


def test_a_bond_above_the_available_balance_is_402_and_moves_nothing(serve: Serve, alice: User, settings: Any) -> None:
    job = serve(alice).job
    available = ledger_selectors.balances_of(user=alice).available
    settings.CHALLENGE_BOND = available + 1
    before = money()
    response = challenge(alice, job)
    assert_refused(response, 402, "insufficient_funds")
    assert f"a bond of {available + 1} base units; you have {available} available" in response.json()["message"]
    assert money() == before and not Dispute.objects.exists()
    settings.CHALLENGE_BOND = available  # all of it is enough
    assert challenge(alice, job).status_code == 201
    assert ledger_selectors.balances_of(user=alice).available == 0


def test_a_challenge_after_the_window_is_409_and_moves_nothing(serve: Serve, alice: User) -> None:
    job = serve(alice).job
    assert job.settled_at is not None
    Job.objects.filter(pk=job.pk).update(settled_at=job.settled_at - timedelta(seconds=WINDOW + 1))
    before = money()
    assert_refused(challenge(alice, job), 409, "challenge_window_over")
    assert money() == before and not Dispute.objects.exists()


def test_a_challenge_just_inside_the_window_is_taken(serve: Serve, alice: User) -> None:
    job = serve(alice).job
    assert job.settled_at is not None
    Job.objects.filter(pk=job.pk).update(settled_at=job.settled_at - timedelta(seconds=WINDOW - 30))
    assert challenge(alice, job).status_code == 201


def test_a_second_challenge_is_409_and_the_bond_moves_once(serve: Serve, alice: User) -> None:
    job = serve(alice).job
    assert challenge(alice, job).status_code == 201
    before = money()
    assert_refused(challenge(alice, job), 409, "already_challenged")
    assert money() == before and Dispute.objects.count() == 1


def test_a_challenge_after_an_audit_is_still_taken(serve: Serve, alice: User) -> None:
    job = serve(alice).job
    assert disputes.audit_open(job_id=job.pk) is not None
    assert challenge(alice, job).status_code == 201
    assert sorted(Dispute.objects.values_list("kind", flat=True)) == ["audit", "challenge"]


def test_a_job_with_nothing_to_check_is_409(serve: Serve, alice: User, model: LanguageModel) -> None:
    unrecorded = serve(alice, transcript=False).job
    unsettled = market_services.job_create(
        buyer=alice,
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        max_new_tokens=4,
        temperature=0,  # type: ignore[arg-type]  # a Decimal field: 0 is stored the same
        top_p=1,  # type: ignore[arg-type]
        seed=None,
        max_price=1_000,
    )
    before = money()
    for job in (unrecorded, unsettled):
        assert_refused(challenge(alice, job), 409, "nothing_to_challenge")
    assert money() == before and not Dispute.objects.exists()


# --- where verification stands ---------------------------------------------------------------------------------


def test_a_settled_job_unchecked_shows_its_window_bond_and_transcript(serve: Serve, alice: User) -> None:
    job = serve(alice).job
    assert job.settled_at is not None
    body = verification(alice, job).json()
    assert (body["job"], body["state"], body["disputes"]) == (job.pk, "unchecked", [])
    assert when(body["challenge_window_closes_at"]) == job.settled_at + timedelta(seconds=WINDOW)
    assert body["challenge_bond"] == BOND == settings.CHALLENGE_BOND
    size = job.transcript.size_bytes
    assert body["transcript_bytes"] == size > 0
    assert body["transcript_bytes_per_token"] == round(size / (job.prompt_tokens + len(job.tokens)), 1)


def test_verification_goes_from_checking_to_verified_for_honest_work(serve: Serve, alice: User) -> None:
    job = serve(alice).job
    challenge(alice, job)
    assert verification(alice, job).json()["state"] == "checking"
    disputes.dispute_advance(dispute_id=Dispute.objects.get().pk)
    body = verification(alice, job).json()
    assert body["state"] == "verified"
    [dispute] = body["disputes"]
    assert (dispute["state"], dispute["reveal_deadline"]) == ("no_fraud", None)
    assert dispute["reason"] and dispute["decided_at"] and dispute["referee"]["tolerance"]["version"]


def test_verification_shows_the_reveal_deadline_then_the_fraud(serve: Serve, alice: User) -> None:
    served = serve(alice, lie_at=1)
    dispute = disputes.audit_open(job_id=served.job.pk)
    assert dispute is not None
    disputes.dispute_advance(dispute_id=dispute.pk)
    dispute.refresh_from_db()
    body = verification(alice, served.job).json()
    assert body["state"] == "checking"
    [shown] = body["disputes"]
    assert (shown["kind"], shown["state"], shown["step"], shown["hop"]) == ("audit", "revealing", 1, 0)
    assert shown["provider"] == served.providers[0].pk
    assert dispute.deadline is not None and when(shown["reveal_deadline"]) == dispute.deadline
    Dispute.objects.filter(pk=dispute.pk).update(deadline=dispute.deadline - timedelta(days=1))
    disputes.dispute_advance(dispute_id=dispute.pk)  # silence loses
    body = verification(alice, served.job).json()
    assert body["state"] == "fraud"
    assert body["disputes"][0]["evidence"]["by_default"] is True


# --- a provider's record ---------------------------------------------------------------------------------------


def test_a_provider_owner_reads_only_its_own_providers_record(
    serve: Serve, alice: User, carol: User, dave: User
) -> None:
    served = serve(alice, lie_at=1, commit=False)  # carol's provider lied and sent no commitments
    dispute = disputes.audit_open(job_id=served.job.pk)
    assert dispute is not None
    disputes.dispute_advance(dispute_id=dispute.pk)
    mine = api(carol).get("/api/provider/audits/").json()
    [provider] = mine["providers"]
    assert (provider["id"], provider["audits_failed"], provider["barred"]) == (served.providers[0].pk, 1, True)
    assert (provider["clean_streak"], provider["reliability_permille"]) == (0, 0)
    assert [(d["id"], d["state"]) for d in mine["disputes"]] == [(dispute.pk, "fraud")]
    theirs = api(dave).get("/api/provider/audits/").json()
    assert [(p["id"], p["barred"]) for p in theirs["providers"]] == [(served.providers[1].pk, False)]
    assert theirs["disputes"] == []
    assert api(alice).get("/api/provider/audits/").json() == {"providers": [], "disputes": []}


# --- two challenges at once (PostgreSQL: SQLite serialises whole write transactions) ---------------------------


def _at_once(user: User, job: Job) -> list[int]:
    """Two challenges of `job` sent together from two threads (two connections); their HTTP statuses."""
    barrier, statuses = threading.Barrier(2), []

    def send() -> None:
        client = APIClient(raise_request_exception=False)
        client.force_authenticate(user)
        barrier.wait()
        try:
            statuses.append(client.post(f"/api/jobs/{job.pk}/challenge/").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return sorted(statuses)


postgres_only = pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3", reason="needs row locks (PostgreSQL)"
)


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_two_challenges_at_once_hold_one_bond_and_open_one_dispute(serve: Serve, alice: User) -> None:
    job = serve(alice).job
    available = ledger_selectors.balances_of(user=alice).available
    statuses = _at_once(alice, job)
    assert statuses[0] == 201 and len(statuses) == 2
    assert Dispute.objects.filter(job=job).count() == 1
    assert ledger_selectors.balances_of(user=alice).available == available - BOND
    assert ledger_selectors.platform_balance(kind=Account.Kind.CHALLENGE_BONDS) == BOND
    assert ledger_selectors.ledger_drift().ok


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_second_of_two_challenges_at_once_is_409(serve: Serve, alice: User) -> None:
    assert _at_once(alice, serve(alice).job) == [201, 409]
