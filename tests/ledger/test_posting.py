"""The core posting: balanced, idempotent, append-only, never below zero."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count, Sum
from hypothesis import given
from hypothesis import strategies as st

from config.errors import Conflict, InvalidInput
from ledger import services
from ledger.errors import InsufficientFunds
from ledger.models import Account, Entry, Transaction
from ledger.services.posting import net_lines, post_lines

if TYPE_CHECKING:  # the fixtures' types (pytest loads conftest itself; never imported at run time)
    from tests.ledger.conftest import Books, MakeUser


Kind = Account.Kind
TxKind = Transaction.Kind

pytestmark = pytest.mark.django_db


def _stake(user: User, amount: int, key: str) -> Transaction:
    available = services.account_for(owner=user, kind=Kind.USER_AVAILABLE)
    stake = services.account_for(owner=user, kind=Kind.STAKE)
    return services.post(kind=TxKind.STAKE, idempotency_key=key, entries=[(available, -amount), (stake, amount)])


def test_a_posting_writes_entries_that_sum_to_zero(alice: User, books: Books) -> None:
    tx = _stake(alice, 300, "stake:1")
    assert sorted(tx.entries.values_list("amount", flat=True)) == [-300, 300]
    assert books.balance(alice, Kind.USER_AVAILABLE) == 9_700
    assert books.balance(alice, Kind.STAKE) == 300


def test_every_transaction_of_a_job_sums_to_zero(alice: User, bob: User, carol: User) -> None:
    services.escrow_for_job(user=alice, amount=1_000, job_ref="j1")
    services.settle_job(job_ref="j1", buyer=alice, payouts=[(bob, 400), (carol, 300)], fee=50)
    services.escrow_for_job(user=alice, amount=500, job_ref="j2")
    services.refund_escrow(user=alice, job_ref="j2")
    sums = Transaction.objects.annotate(total=Sum("entries__amount"), n=Count("entries"))
    assert sums.count() == 5  # alice's funds, two escrows, a settlement, a refund
    assert all(t.total == 0 and t.n >= 2 for t in sums)
    assert sum(Account.objects.values_list("balance", flat=True)) == 0


def test_unbalanced_entries_are_refused_and_write_nothing(alice: User, bob: User, books: Books) -> None:
    before = books.state()
    a = services.account_for(owner=alice, kind=Kind.USER_AVAILABLE)
    b = services.account_for(owner=bob, kind=Kind.USER_AVAILABLE)
    with pytest.raises(InvalidInput, match="sum to zero"):
        services.post(kind=TxKind.STAKE, idempotency_key="bad", entries=[(a, -300), (b, 200)])
    with pytest.raises(InvalidInput, match="two entries"):
        services.post(kind=TxKind.STAKE, idempotency_key="bad", entries=[(a, -300), (a, 300)])
    with pytest.raises(InvalidInput, match="non-zero integer"):
        services.post(kind=TxKind.STAKE, idempotency_key="bad", entries=[(a, 0.5), (b, -0.5)])  # type: ignore[list-item]
    assert books.state() == before


def test_posting_twice_with_one_key_returns_the_same_transaction_and_changes_nothing(alice: User, books: Books) -> None:
    first = _stake(alice, 300, "stake:once")
    after_first = books.state()
    again = _stake(alice, 300, "stake:once")
    assert again.pk == first.pk
    assert books.state() == after_first
    assert books.balance(alice, Kind.STAKE) == 300


def test_the_same_key_with_a_different_intent_is_a_conflict(alice: User, books: Books) -> None:
    _stake(alice, 300, "stake:once")
    before = books.state()
    with pytest.raises(Conflict, match="stake:once"):
        _stake(alice, 301, "stake:once")
    assert books.state() == before


def test_service_keys_conflict_too(alice: User, books: Books) -> None:
    tx = services.escrow_for_job(user=alice, amount=1_000, job_ref="j1")
    assert services.escrow_for_job(user=alice, amount=1_000, job_ref="j1").pk == tx.pk
    before = books.state()
    with pytest.raises(Conflict):
        services.escrow_for_job(user=alice, amount=2_000, job_ref="j1")
    assert books.state() == before


def test_no_account_but_the_mint_goes_below_zero(alice: User, books: Books) -> None:
    before = books.state()
    with pytest.raises(InsufficientFunds) as caught:
        _stake(alice, 10_001, "stake:too-much")
    assert caught.value.status == 402 and caught.value.code == "insufficient_funds"
    assert books.state() == before


def test_ledger_rows_are_append_only(alice: User) -> None:
    tx = _stake(alice, 300, "stake:1")
    entry = tx.entries.first()
    assert entry is not None
    with pytest.raises(TypeError):
        tx.save()
    with pytest.raises(TypeError):
        entry.delete()
    with pytest.raises(TypeError):
        Transaction.objects.filter(pk=tx.pk).update(memo="edited")
    with pytest.raises(TypeError):
        Entry.objects.filter(transaction=tx).delete()
    account = Account.objects.get(owner=alice, kind=Kind.STAKE)
    account.balance = 10**9
    with pytest.raises(TypeError):
        account.save()
    assert Account.objects.get(pk=account.pk).balance == 300


def test_amounts_must_be_positive_integers_in_range(make_user: MakeUser) -> None:
    user = make_user()
    for bad in (0, -5, 1.5, True, "10", services.MAX_AMOUNT + 1):
        with pytest.raises(InvalidInput):
            services.mint_as_system(to_user=user, amount=bad, key=f"bad:{bad!r}")  # type: ignore[arg-type]
    assert not Transaction.objects.filter(idempotency_key__startswith="mint:bad:").exists()


@given(amounts=st.lists(st.integers(min_value=-(10**6), max_value=10**6), min_size=1, max_size=6))
def test_net_lines_accepts_exactly_the_balanced_entry_lists(amounts: list[int]) -> None:
    # Unsaved accounts with a pk: net_lines is pure, no database needed. Account i gets amounts[i].
    accounts = [Account(pk=i + 1, kind=Kind.USER_AVAILABLE) for i in range(len(amounts))]
    entries = list(zip(accounts, amounts, strict=True))
    nonzero = [a for a in amounts if a]
    if 0 in amounts or sum(amounts) != 0 or len(nonzero) < 2:
        with pytest.raises(InvalidInput):
            net_lines(entries)
    else:
        lines = net_lines(entries)
        assert sum(lines.values()) == 0 and len(lines) == len(amounts)


def test_accounts_are_locked_users_first_then_the_platform(alice: User, bob: User) -> None:
    fees = services.account_for(owner=None, kind=Kind.PLATFORM_FEES)
    mine = services.account_for(owner=bob, kind=Kind.PROVIDER_PENDING)  # opened after fees: a higher pk
    issuer = Account.objects.get(kind=Kind.MINT)  # opened by alice's funds, before both
    with transaction.atomic():
        order = list(services.lock_accounts([issuer.pk, fees.pk, mine.pk]))
    assert order == [mine.pk, issuer.pk, fees.pk]


def test_only_a_platform_credit_may_be_posted_without_its_lock(alice: User, bob: User, books: Books) -> None:
    a = services.account_for(owner=alice, kind=Kind.USER_AVAILABLE)
    b = services.account_for(owner=bob, kind=Kind.USER_AVAILABLE)
    before = books.state()
    with pytest.raises(InvalidInput, match="platform account"), transaction.atomic():
        locked = services.lock_accounts([a.pk])
        post_lines(kind=TxKind.STAKE, key="unlocked", lines={a.pk: -5, b.pk: 5}, locked=locked)
    assert books.state() == before
