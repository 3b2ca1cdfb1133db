"""Builders for the ledger tests: users (optionally staff, optionally funded), a job builder, ledger snapshots."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import User

from ledger import selectors, services
from ledger.models import Account, Entry, PendingRelease, Transaction

Kind = Account.Kind
MakeUser = Callable[..., User]
_names = itertools.count()


@pytest.fixture
def make_user() -> MakeUser:
    """make_user(name=None, *, staff=False, funds=0): a user, with `funds` base units minted to it."""

    def build(name: str | None = None, *, staff: bool = False, funds: int = 0) -> User:
        user = User.objects.create_user(username=name or f"user{next(_names)}", is_staff=staff)
        if funds:
            services.mint_as_system(to_user=user, amount=funds, key=f"test-funds:{user.pk}")
        return user

    return build


@pytest.fixture
def alice(make_user: MakeUser) -> User:
    """A buyer with 10,000 base units available."""
    return make_user("alice", funds=10_000)


@pytest.fixture
def bob(make_user: MakeUser) -> User:
    """A provider with nothing yet."""
    return make_user("bob")


@pytest.fixture
def carol(make_user: MakeUser) -> User:
    """Another provider with nothing yet."""
    return make_user("carol")


@pytest.fixture
def operator(make_user: MakeUser) -> User:
    return make_user("operator", staff=True)


@dataclass(frozen=True)
class LedgerState:
    """Everything a write could change: non-zero balances and the number of rows of each ledger table."""

    balances: dict[tuple[int | None, str], int]
    transactions: int
    entries: int
    pending_rows: int


class Books:
    """Reads for assertions, straight from the tables (tests import no helpers: they get this as a fixture)."""

    def state(self) -> LedgerState:
        """The ledger now. Empty accounts are left out: opening one moves no money."""
        balances = {(a.owner_id, a.kind): a.balance for a in Account.objects.exclude(balance=0)}
        return LedgerState(
            balances=balances,
            transactions=Transaction.objects.count(),
            entries=Entry.objects.count(),
            pending_rows=PendingRelease.objects.count(),
        )

    def balance(self, user: User | None, kind: str) -> int:
        """One cached balance (0 for an account not opened yet); user None for the platform's accounts."""
        if user is None:
            return selectors.platform_balance(kind=kind)
        return Account.objects.filter(owner=user, kind=kind).values_list("balance", flat=True).first() or 0

    def fees(self) -> int:
        return self.balance(None, Kind.PLATFORM_FEES)


@pytest.fixture
def books() -> Books:
    return Books()
