"""Property tests: random sequences of ledger operations keep the invariant and agree with a plain model.

A hypothesis state machine mints, escrows, refunds, settles, releases and retries at random. After every step the
database must match a model kept in Python ints, and the ledger's own check must hold: the balances sum to what
was minted, each cached balance is the sum of its entries, and every transaction sums to zero.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from config.errors import Conflict
from ledger import selectors, services
from ledger.errors import InsufficientFunds
from ledger.models import Account, Transaction

Kind = Account.Kind
USERS = 3
amounts = st.integers(min_value=1, max_value=5_000)
_runs = itertools.count()


@dataclass
class OpenJob:
    ref: str
    buyer: int  # index into the machine's users
    held: int


@dataclass(frozen=True)
class Settlement:
    """One call of settle_job, kept so that it can be retried."""

    job: OpenJob
    buyer: User
    payouts: list[tuple[User, int]]
    fee: int

    def run(self) -> Transaction:
        return services.settle_job(job_ref=self.job.ref, buyer=self.buyer, payouts=self.payouts, fee=self.fee)


class LedgerMachine(RuleBasedStateMachine):
    """Each run works inside one atomic block that is rolled back at teardown, so runs never see each other."""

    def __init__(self) -> None:
        super().__init__()
        self._atomic = transaction.atomic()
        self._atomic.__enter__()
        run = next(_runs)
        self.users = [User.objects.create_user(username=f"prop{run}-{i}") for i in range(USERS)]
        self.model: Counter[tuple[int, str]] = Counter()  # (user index, account kind) -> expected balance
        self.fees = self.minted = 0
        self.open: list[OpenJob] = []
        self.settlements: list[Settlement] = []
        self.jobs = itertools.count()

    def teardown(self) -> None:
        transaction.set_rollback(True)
        self._atomic.__exit__(None, None, None)

    @rule(who=st.integers(0, USERS - 1), amount=amounts)
    def mint(self, who: int, amount: int) -> None:
        services.mint_as_system(to_user=self.users[who], amount=amount, key=f"m{next(self.jobs)}")
        self.model[who, Kind.USER_AVAILABLE] += amount
        self.minted += amount

    @rule(who=st.integers(0, USERS - 1), amount=amounts)
    def escrow(self, who: int, amount: int) -> None:
        available, earnings = self.model[who, Kind.USER_AVAILABLE], self.model[who, Kind.PROVIDER_AVAILABLE]
        ref = f"job{next(self.jobs)}"
        if amount > available + earnings:
            with pytest.raises(InsufficientFunds):
                services.escrow_for_job(user=self.users[who], amount=amount, job_ref=ref)
            return
        services.escrow_for_job(user=self.users[who], amount=amount, job_ref=ref)
        self.model[who, Kind.USER_AVAILABLE] -= min(available, amount)
        self.model[who, Kind.PROVIDER_AVAILABLE] -= amount - min(available, amount)
        self.model[who, Kind.USER_ESCROW] += amount
        self.open.append(OpenJob(ref, who, amount))

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        job = self.open.pop(data.draw(st.integers(0, len(self.open) - 1)))
        services.refund_escrow(user=self.users[job.buyer], job_ref=job.ref)
        self.model[job.buyer, Kind.USER_ESCROW] -= job.held
        self.model[job.buyer, Kind.USER_AVAILABLE] += job.held

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        job = self.open[data.draw(st.integers(0, len(self.open) - 1))]
        # At most four parts of a quarter each: the market never asks for more than the job holds.
        part = st.integers(0, job.held // 4)
        pay = data.draw(st.lists(st.tuples(st.integers(0, USERS - 1), part), max_size=3))
        call = self._settlement(job, pay, fee=data.draw(part))
        call.run()
        self.open.remove(job)
        self.settlements.append(call)
        paid = call.fee + sum(amount for _, amount in pay)
        for who, amount in pay:
            self.model[who, Kind.PROVIDER_PENDING] += amount
        self.model[job.buyer, Kind.USER_ESCROW] -= job.held
        self.model[job.buyer, Kind.USER_AVAILABLE] += job.held - paid
        self.fees += call.fee

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def settle_too_much(self, data: st.DataObject) -> None:
        job = self.open[data.draw(st.integers(0, len(self.open) - 1))]
        who = data.draw(st.integers(0, USERS - 1))
        with pytest.raises(Conflict):
            self._settlement(job, [(who, job.held)], fee=1).run()

    def _settlement(self, job: OpenJob, pay: list[tuple[int, int]], fee: int) -> Settlement:
        return Settlement(job, self.users[job.buyer], [(self.users[who], amount) for who, amount in pay], fee)

    @precondition(lambda self: self.settlements)
    @rule(data=st.data())
    def retry_a_settlement(self, data: st.DataObject) -> None:
        call = data.draw(st.sampled_from(self.settlements))
        before = Transaction.objects.count()
        call.run()  # a retried task: returns the first settlement and changes nothing
        assert Transaction.objects.count() == before

    @rule(window_closed=st.booleans())
    def release(self, window_closed: bool) -> None:
        # Every pending row was written in this run, less than a window ago: closed means a window from now.
        later = timezone.now() + (services.challenge_window() if window_closed else -timedelta(seconds=1))
        services.release_due_earnings(now=later)
        if window_closed:
            for who in range(USERS):
                self.model[who, Kind.PROVIDER_AVAILABLE] += self.model.pop((who, Kind.PROVIDER_PENDING), 0)

    @invariant()
    def database_matches_the_model(self) -> None:
        for who, user in enumerate(self.users):
            got = dict(Account.objects.filter(owner=user).exclude(balance=0).values_list("kind", "balance"))
            want = {kind: value for (i, kind), value in self.model.items() if i == who and value}
            assert got == want
        assert selectors.platform_balance(kind=Kind.PLATFORM_FEES) == self.fees

    @invariant()
    def the_ledger_is_sound(self) -> None:
        drift = selectors.ledger_drift()
        assert drift.ok, drift
        assert drift.held == drift.minted == self.minted


@pytest.mark.django_db
def test_random_operation_sequences_keep_the_invariant() -> None:
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=40, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        ),
    )
