"""The invariant under concurrent escrow, settlement and refund from several threads, each with its own connection.

PostgreSQL only: the ledger's row locks (select_for_update) are what is being tested, and SQLite has none (it
serialises whole write transactions, and an in-memory test database is not shared between threads).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection

from ledger import selectors, services
from ledger.errors import InsufficientFunds
from ledger.models import Account, PendingRelease, Transaction

if TYPE_CHECKING:  # the fixtures' types (pytest loads conftest itself; never imported at run time)
    from tests.ledger.conftest import Books, MakeUser


Kind = Account.Kind
THREADS = 6

pytestmark = [
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="needs PostgreSQL row locks and a database shared by threads (run with DATABASE_URL=postgres://...)",
    ),
    pytest.mark.django_db(transaction=True),
]


def _in_threads(work: Sequence[Callable[[], object]]) -> list[BaseException]:
    """Run every callable in a pool of THREADS threads that start together; return the unexpected errors."""
    start = threading.Barrier(THREADS)
    chunks = [work[i::THREADS] for i in range(THREADS)]
    errors: list[BaseException] = []

    def worker(chunk: Sequence[Callable[[], object]]) -> None:
        try:
            start.wait()
            for call in chunk:
                try:
                    call()
                except InsufficientFunds:
                    pass  # expected where funds run out; the test counts what succeeded
                except BaseException as error:  # noqa: BLE001 - reported to the main thread
                    errors.append(error)
        finally:
            connection.close()  # this thread's own connection; left open it would block the test's teardown

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(worker, chunks))
    return errors


def _job(buyer: User, providers: list[User], job_ref: str, settle: bool) -> Callable[[], object]:
    """Escrow 1,000 for a job, then settle it (600 to providers, fee 30) or refund it; every step idempotent."""

    def run() -> None:
        services.escrow_for_job(user=buyer, amount=1_000, job_ref=job_ref)
        if settle:
            payouts = [(providers[0], 400), (providers[1], 200)]
            services.settle_job(job_ref=job_ref, buyer=buyer, payouts=payouts, fee=30)
        else:
            services.refund_escrow(user=buyer, job_ref=job_ref)

    return run


def _mint(user: User, key: str) -> Callable[[], object]:
    return lambda: services.mint_as_system(to_user=user, amount=1_000, key=key)


def test_concurrent_escrow_settle_and_refund_keep_the_invariant(make_user: MakeUser, books: Books) -> None:
    buyers = [make_user(funds=100_000) for _ in range(4)]
    providers = [make_user() for _ in range(3)]
    jobs = [(buyers[i % 4], f"job-{i}", i % 3 != 0) for i in range(60)]
    # Every job is driven by two threads at once, so each escrow, settlement and refund is also raced by its twin.
    pairs = [random.Random(ref).sample(providers, 2) for _, ref, _ in jobs]  # the same for both twins of a job
    work = [_job(b, pair, ref, settle) for (b, ref, settle), pair in zip(jobs, pairs, strict=True) for _ in range(2)]
    # Mints lock the buyers' rows and then a platform row, as settlements do: the shared order rules out deadlocks.
    work += [_mint(b, f"top-up-{b.pk}-{i}") for b in buyers for i in range(5)]
    random.Random(7).shuffle(work)
    assert _in_threads(work) == []

    settled = [(b, ref) for b, ref, settle in jobs if settle]
    assert Transaction.objects.filter(kind=Transaction.Kind.ESCROW).count() == 60
    assert Transaction.objects.filter(kind=Transaction.Kind.SETTLEMENT).count() == len(settled)
    assert Transaction.objects.filter(kind=Transaction.Kind.REFUND).count() == 60 - len(settled)
    assert books.fees() == 30 * len(settled)
    assert sum(books.balance(p, Kind.PROVIDER_PENDING) for p in providers) == 600 * len(settled)
    for buyer in buyers:
        spent = 630 * sum(1 for b, _ in settled if b == buyer)
        assert selectors.balances_of(user=buyer) == selectors.Balances(available=100_000 + 5 * 1_000 - spent)
    drift = selectors.ledger_drift()
    assert drift.ok and drift.minted == 4 * (100_000 + 5 * 1_000)
    call_command("ledger_check")


def test_concurrent_escrows_never_overdraw(make_user: MakeUser, books: Books) -> None:
    buyer = make_user(funds=1_000)
    work = [lambda i=i: services.escrow_for_job(user=buyer, amount=100, job_ref=f"j{i}") for i in range(30)]
    assert _in_threads(work) == []
    assert Transaction.objects.filter(kind=Transaction.Kind.ESCROW).count() == 10  # 1,000 / 100, no more
    assert selectors.balances_of(user=buyer) == selectors.Balances(escrow=1_000)
    assert selectors.ledger_drift().ok


def test_concurrent_release_runs_pay_each_earning_once(make_user: MakeUser, books: Books) -> None:
    buyer, provider = make_user(funds=100_000), make_user()
    for i in range(20):
        services.escrow_for_job(user=buyer, amount=1_000, job_ref=f"j{i}")
        services.settle_job(job_ref=f"j{i}", buyer=buyer, payouts=[(provider, 500)], fee=0)
    later = PendingRelease.objects.latest("release_after").release_after
    released: list[int] = []
    assert _in_threads([lambda: released.append(services.release_due_earnings(now=later))] * THREADS) == []
    assert sum(released) == 20
    assert selectors.balances_of(user=provider) == selectors.Balances(earnings=10_000)
    assert selectors.ledger_drift().ok
