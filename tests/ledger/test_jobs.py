"""A job's money: escrow on bid, refund, settlement into pending earnings, the fee and the unused escrow."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from django.contrib.auth.models import User
from django.db import transaction

from config.errors import Conflict, InvalidInput
from ledger import selectors, services
from ledger.errors import InsufficientFunds
from ledger.models import Account, PendingRelease, Transaction

if TYPE_CHECKING:  # the fixtures' types (pytest loads conftest itself; never imported at run time)
    from tests.ledger.conftest import Books, MakeUser

Kind = Account.Kind

pytestmark = pytest.mark.django_db


def test_escrow_moves_the_maximum_price_from_available_to_escrow(alice: User, books: Books) -> None:
    services.escrow_for_job(user=alice, amount=1_500, job_ref="j1")
    assert selectors.balances_of(user=alice) == selectors.Balances(available=8_500, escrow=1_500)
    assert selectors.escrow_held(user=alice, job_ref="j1") == 1_500


def test_escrow_without_enough_funds_raises_and_changes_nothing(alice: User, books: Books) -> None:
    services.escrow_for_job(user=alice, amount=9_000, job_ref="j1")
    before = books.state()
    with pytest.raises(InsufficientFunds, match="needs 1001 base units.*you have 1000") as caught:
        services.escrow_for_job(user=alice, amount=1_001, job_ref="j2")
    assert caught.value.status == 402
    assert books.state() == before
    assert not Transaction.objects.filter(job_ref="j2").exists()


def test_escrow_of_a_user_with_nothing_raises(make_user: MakeUser, books: Books) -> None:
    broke = make_user()
    with pytest.raises(InsufficientFunds):
        services.escrow_for_job(user=broke, amount=1, job_ref="j1")
    assert books.state().transactions == 0


def test_refund_returns_everything_the_job_holds(alice: User, books: Books) -> None:
    services.escrow_for_job(user=alice, amount=2_000, job_ref="j1")
    tx = services.refund_escrow(user=alice, job_ref="j1")
    assert tx.kind == Transaction.Kind.REFUND
    assert selectors.balances_of(user=alice) == selectors.Balances(available=10_000)
    assert selectors.escrow_held(user=alice, job_ref="j1") == 0
    assert services.refund_escrow(user=alice, job_ref="j1").pk == tx.pk  # a retried refund refunds once


def test_partial_refunds_never_exceed_the_escrow(alice: User, books: Books) -> None:
    services.escrow_for_job(user=alice, amount=2_000, job_ref="j1")
    services.escrow_for_job(user=alice, amount=500, job_ref="j2")  # another job's escrow is not this job's
    services.refund_escrow(user=alice, job_ref="j1", amount=1_500, key="refund:j1:a")
    before = books.state()
    with pytest.raises(Conflict, match="holds 500"):
        services.refund_escrow(user=alice, job_ref="j1", amount=501, key="refund:j1:b")
    assert books.state() == before
    services.refund_escrow(user=alice, job_ref="j1", amount=500, key="refund:j1:b")
    assert books.balance(alice, Kind.USER_ESCROW) == 500
    assert books.balance(alice, Kind.USER_AVAILABLE) == 9_500


def test_refund_of_a_job_without_escrow_is_a_conflict(alice: User, books: Books) -> None:
    with pytest.raises(Conflict, match="holds 0"):
        services.refund_escrow(user=alice, job_ref="never")
    assert books.state().transactions == 1  # alice's funds only


def test_settlement_pays_pending_earnings_the_fee_and_refunds_unused_escrow(
    alice: User, bob: User, carol: User, books: Books
) -> None:
    services.escrow_for_job(user=alice, amount=2_000, job_ref="j1")
    tx = services.settle_job(job_ref="j1", buyer=alice, payouts=[(bob, 700), (carol, 500), (bob, 100)], fee=60)
    assert books.balance(bob, Kind.PROVIDER_PENDING) == 800
    assert books.balance(carol, Kind.PROVIDER_PENDING) == 500
    assert books.balance(bob, Kind.PROVIDER_AVAILABLE) == 0  # nothing spendable inside the challenge window
    assert books.fees() == 60
    assert selectors.balances_of(user=alice) == selectors.Balances(available=10_000 - 1_360)
    rows = {r.provider_id: r.amount for r in PendingRelease.objects.filter(settlement=tx)}
    assert rows == {bob.pk: 800, carol.pk: 500}


def test_settling_twice_is_settling_once(alice: User, bob: User, books: Books) -> None:
    services.escrow_for_job(user=alice, amount=2_000, job_ref="j1")
    first = services.settle_job(job_ref="j1", buyer=alice, payouts=[(bob, 700)], fee=60)
    once = books.state()
    again = services.settle_job(job_ref="j1", buyer=alice, payouts=[(bob, 700)], fee=60)
    assert again.pk == first.pk
    assert books.state() == once
    with pytest.raises(Conflict):
        services.settle_job(job_ref="j1", buyer=alice, payouts=[(bob, 701)], fee=60)
    assert books.state() == once


def test_work_the_platform_pays_for_comes_from_its_fees_then_is_issued_and_is_pending_like_any_pay(
    alice: User, bob: User, carol: User, books: Books
) -> None:
    services.escrow_for_job(user=alice, amount=2_000, job_ref="j0")
    services.settle_job(job_ref="j0", buyer=alice, payouts=[(bob, 500)], fee=100)  # the platform holds 100 in fees
    minted = books.balance(None, Kind.MINT)
    services.escrow_for_job(user=alice, amount=2_000, job_ref="j1")
    services.settle_job(
        job_ref="j1", buyer=alice, payouts=[(bob, 700)], fee=60, platform_payouts=[(carol, 300), (bob, 50)]
    )
    # The buyer pays only its own settlement; the platform pays 350: its 160 in fees, and 190 issued.
    assert selectors.balances_of(user=alice).available == 10_000 - 600 - 760
    assert (books.fees(), books.balance(None, Kind.MINT)) == (0, minted - 190)
    assert books.balance(bob, Kind.PROVIDER_PENDING) == 500 + 750
    assert books.balance(carol, Kind.PROVIDER_PENDING) == 300
    paid_by_platform = Transaction.objects.get(kind=Transaction.Kind.PLATFORM_PAY, job_ref="j1")
    rows = {r.provider_id: r.amount for r in PendingRelease.objects.filter(settlement=paid_by_platform)}
    assert rows == {carol.pk: 300, bob.pk: 50}
    once = books.state()
    services.settle_job(
        job_ref="j1", buyer=alice, payouts=[(bob, 700)], fee=60, platform_payouts=[(carol, 300), (bob, 50)]
    )
    assert books.state() == once  # settling twice pays once
    assert selectors.ledger_drift().ok


def test_settlement_above_the_escrow_is_refused_and_changes_nothing(alice: User, bob: User, books: Books) -> None:
    services.escrow_for_job(user=alice, amount=1_000, job_ref="j1")
    before = books.state()
    with pytest.raises(Conflict, match="pays 1001"):
        services.settle_job(job_ref="j1", buyer=alice, payouts=[(bob, 1_000)], fee=1)
    assert books.state() == before


def test_a_refunded_job_cannot_be_settled(alice: User, bob: User, books: Books) -> None:
    services.escrow_for_job(user=alice, amount=1_000, job_ref="j1")
    services.refund_escrow(user=alice, job_ref="j1")
    before = books.state()
    with pytest.raises(Conflict, match="holds 0"):
        services.settle_job(job_ref="j1", buyer=alice, payouts=[(bob, 10)], fee=0)
    assert books.state() == before


def test_settlement_after_a_partial_refund_settles_what_is_left(alice: User, bob: User, books: Books) -> None:
    services.escrow_for_job(user=alice, amount=1_000, job_ref="j1")
    services.refund_escrow(user=alice, job_ref="j1", amount=300)
    services.settle_job(job_ref="j1", buyer=alice, payouts=[(bob, 600)], fee=10)
    assert books.balance(alice, Kind.USER_ESCROW) == 0
    assert books.balance(alice, Kind.USER_AVAILABLE) == 10_000 - 610


@pytest.mark.parametrize(
    ("payouts", "fee"),
    [([("bob", -1)], 0), ([("bob", 1.5)], 0), ([("bob", 10)], -1), ("bob", 0), ([("bob",)], 0), ([(None, 5)], 0)],
)
def test_bad_settlement_input_is_refused(alice: User, bob: User, books: Books, payouts: object, fee: int) -> None:
    services.escrow_for_job(user=alice, amount=1_000, job_ref="j1")
    if isinstance(payouts, list):
        payouts = [tuple(bob if x == "bob" else x for x in pair) for pair in payouts]
    before = books.state()
    with pytest.raises(InvalidInput):
        services.settle_job(job_ref="j1", buyer=alice, payouts=payouts, fee=fee)  # type: ignore[arg-type]
    assert books.state() == before


def test_a_refused_escrow_leaves_the_callers_transaction_usable(alice: User, books: Books) -> None:
    # The market escrows inside its own transaction (the bid and its escrow commit together); a refusal must
    # undo only the escrow, so the caller can report it and go on.
    with transaction.atomic():
        with pytest.raises(InsufficientFunds):
            services.escrow_for_job(user=alice, amount=10_001, job_ref="too-big")
        services.escrow_for_job(user=alice, amount=10_000, job_ref="fits")
    assert books.balance(alice, Kind.USER_ESCROW) == 10_000
    assert not Transaction.objects.filter(job_ref="too-big").exists()
