"""The money of a dispute (ledger/services/disputes.py) on the real ledger: a challenger's bond held (402 and nothing
moved when short), returned, or awarded in shares; a fraud refund that gives the buyer back what the job cost, once
however often it is called, reversing only the cheating provider's own pay when its owner runs several providers.
After every posting the ledger's invariants hold (ledger.selectors.ledger_drift, what `manage.py ledger_check` runs).
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from config.errors import InvalidInput
from ledger import selectors, services
from ledger.errors import InsufficientFunds
from ledger.models import Account, Entry, PendingRelease, Transaction
from ledger.services import disputes as money

Kind = Account.Kind
pytestmark = pytest.mark.django_db

GRANT = 1_000_000  # settings.SIGNUP_GRANT: what alice, carol and dave start with
BOND = 50_000
REF = "job-1"


def snapshot() -> tuple[dict[tuple[int | None, str], int], int, int]:
    """Every non-zero balance and the number of transactions and entries: what any posting would change."""
    balances = {(a.owner_id, a.kind): a.balance for a in Account.objects.exclude(balance=0)}
    return balances, Transaction.objects.count(), Entry.objects.count()


def bonds_held() -> int:
    return selectors.platform_balance(kind=Kind.CHALLENGE_BONDS)


def assert_ledger_sound() -> None:
    drift = selectors.ledger_drift()
    assert drift.ok, drift


# --- the bond --------------------------------------------------------------------------------------------------


def test_a_bond_moves_from_available_into_the_challenge_bond_account(alice: User) -> None:
    tx = money.bond_post(user=alice, amount=BOND, job_ref=REF, key=f"bond:{REF}")
    assert (tx.kind, tx.job_ref) == (Transaction.Kind.CHALLENGE_BOND, REF)
    assert selectors.balances_of(user=alice).available == GRANT - BOND
    assert bonds_held() == BOND
    assert_ledger_sound()


def test_a_bond_beyond_the_available_balance_is_402_and_nothing_moves(alice: User) -> None:
    services.escrow_for_job(user=alice, amount=GRANT - BOND + 1, job_ref="job-0")  # BOND - 1 left available
    before = snapshot()
    with pytest.raises(InsufficientFunds, match=f"bond of {BOND} base units; you have {BOND - 1} available") as e:
        money.bond_post(user=alice, amount=BOND, job_ref=REF, key=f"bond:{REF}")
    assert (e.value.status, e.value.code) == (402, "insufficient_funds")
    assert snapshot() == before and bonds_held() == 0
    assert not Transaction.objects.filter(idempotency_key=f"bond:{REF}").exists()
    assert_ledger_sound()


def test_released_earnings_do_not_count_toward_the_bond(alice: User, carol: User) -> None:
    """The bond is taken from the available balance only: a provider's released earnings are not touched."""
    money.bond_post(user=alice, amount=BOND, job_ref="job-0", key="bond:job-0")
    money.bond_award(shares=[(carol, BOND)], job_ref="job-0", key="award:job-0")  # carol now has earnings
    services.escrow_for_job(user=carol, amount=GRANT, job_ref="job-9")  # and nothing available
    before = snapshot()
    with pytest.raises(InsufficientFunds):
        money.bond_post(user=carol, amount=BOND, job_ref=REF, key=f"bond:{REF}")
    assert snapshot() == before and selectors.balances_of(user=carol).earnings == BOND


def test_a_bond_posted_again_under_its_key_moves_once(alice: User) -> None:
    first = money.bond_post(user=alice, amount=BOND, job_ref=REF, key=f"bond:{REF}")
    again = money.bond_post(user=alice, amount=BOND, job_ref=REF, key=f"bond:{REF}")
    assert again.pk == first.pk
    assert (selectors.balances_of(user=alice).available, bonds_held()) == (GRANT - BOND, BOND)
    assert_ledger_sound()


@pytest.mark.parametrize("posting", ["post", "return", "award"])
def test_a_replay_returns_the_posting_even_when_the_balance_would_not_cover_it_now(
    alice: User, carol: User, posting: str
) -> None:
    first = money.bond_post(user=alice, amount=BOND, job_ref=REF, key=f"bond:{REF}")
    if posting == "post":
        services.escrow_for_job(user=alice, amount=GRANT - BOND, job_ref="job-0")  # nothing left available
        again = money.bond_post(user=alice, amount=BOND, job_ref=REF, key=f"bond:{REF}")
    elif posting == "return":
        first = money.bond_return(user=alice, amount=BOND, job_ref=REF, key=f"bond-back:{REF}")
        again = money.bond_return(user=alice, amount=BOND, job_ref=REF, key=f"bond-back:{REF}")
    else:
        first = money.bond_award(shares=[(carol, BOND)], job_ref=REF, key=f"bond-award:{REF}")
        again = money.bond_award(shares=[(carol, BOND)], job_ref=REF, key=f"bond-award:{REF}")
    assert again.pk == first.pk


@pytest.mark.parametrize("amount", [0, -1, True, 1.5])
def test_a_bond_must_be_a_positive_whole_amount(alice: User, amount: object) -> None:
    before = snapshot()
    with pytest.raises(InvalidInput):
        money.bond_post(user=alice, amount=amount, job_ref=REF, key=f"bond:{REF}")  # type: ignore[arg-type]
    assert snapshot() == before


def test_a_returned_bond_goes_back_to_the_challenger_once(alice: User, bob: User) -> None:
    money.bond_post(user=bob, amount=BOND, job_ref="job-2", key="bond:job-2")  # another challenge's bond, held
    money.bond_post(user=alice, amount=BOND, job_ref=REF, key=f"bond:{REF}")
    for _ in range(2):
        money.bond_return(user=alice, amount=BOND, job_ref=REF, key=f"bond-back:{REF}")
    assert (selectors.balances_of(user=alice).available, bonds_held()) == (GRANT, BOND)
    assert Transaction.objects.filter(idempotency_key=f"bond-back:{REF}").count() == 1
    assert_ledger_sound()


def test_returning_more_than_the_bonds_held_is_402_and_moves_nothing(alice: User) -> None:
    money.bond_post(user=alice, amount=BOND, job_ref=REF, key=f"bond:{REF}")
    money.bond_return(user=alice, amount=BOND, job_ref=REF, key="back-1")
    before = snapshot()
    with pytest.raises(InsufficientFunds):
        money.bond_return(user=alice, amount=BOND, job_ref=REF, key="back-2")
    assert snapshot() == before


def test_an_awarded_bond_is_split_into_the_providers_released_earnings_once(
    alice: User, bob: User, carol: User, dave: User
) -> None:
    money.bond_post(user=bob, amount=BOND, job_ref="job-2", key="bond:job-2")  # another challenge's bond, held
    money.bond_post(user=alice, amount=BOND, job_ref=REF, key=f"bond:{REF}")
    shares = [(carol, 30_001), (dave, 19_999)]
    for _ in range(2):
        money.bond_award(shares=shares, job_ref=REF, key=f"bond-award:{REF}")
    assert selectors.balances_of(user=carol).earnings == 30_001
    assert selectors.balances_of(user=dave).earnings == 19_999
    assert (bonds_held(), selectors.balances_of(user=alice).available) == (BOND, GRANT - BOND)
    [tx] = Transaction.objects.filter(idempotency_key=f"bond-award:{REF}")
    assert sorted(tx.entries.values_list("amount", flat=True)) == [-BOND, 19_999, 30_001]
    assert_ledger_sound()


def test_shares_of_one_provider_are_netted_into_one_line(alice: User, carol: User) -> None:
    money.bond_post(user=alice, amount=BOND, job_ref=REF, key=f"bond:{REF}")
    tx = money.bond_award(shares=[(carol, 25_000), (carol, 25_000)], job_ref=REF, key=f"bond-award:{REF}")
    assert sorted(tx.entries.values_list("amount", flat=True)) == [-BOND, BOND]
    assert selectors.balances_of(user=carol).earnings == BOND
    assert_ledger_sound()


def test_an_award_beyond_the_bonds_held_or_to_nobody_moves_nothing(alice: User, carol: User) -> None:
    money.bond_post(user=alice, amount=BOND, job_ref=REF, key=f"bond:{REF}")
    before = snapshot()
    with pytest.raises(InsufficientFunds):
        money.bond_award(shares=[(carol, BOND + 1)], job_ref=REF, key=f"bond-award:{REF}")
    with pytest.raises(InvalidInput, match="at least one provider"):
        money.bond_award(shares=[], job_ref=REF, key=f"bond-award:{REF}")
    assert snapshot() == before


def test_an_award_of_nothing_leaves_the_ledger_sound(alice: User, carol: User) -> None:
    money.bond_post(user=alice, amount=BOND, job_ref=REF, key=f"bond:{REF}")
    with contextlib.suppress(InvalidInput):
        money.bond_award(shares=[(carol, 0)], job_ref=REF, key=f"bond-award:{REF}")
    assert_ledger_sound()


def test_a_negative_share_is_refused(alice: User, carol: User, dave: User) -> None:
    money.bond_post(user=alice, amount=BOND, job_ref=REF, key=f"bond:{REF}")
    money.bond_award(shares=[(dave, 10_000)], job_ref=REF, key="award-1")
    with pytest.raises(InvalidInput):
        money.bond_award(shares=[(carol, 50_000), (dave, -10_000)], job_ref=REF, key="award-2")


# --- the fraud refund ------------------------------------------------------------------------------------------

FEE = 100


def settled(buyer: User, payouts: list[tuple[User, int]]) -> None:
    """The job escrowed 10,000 and settled: each payout pending for its provider, FEE to the platform."""
    services.escrow_for_job(user=buyer, amount=10_000, job_ref=REF)
    services.settle_job(job_ref=REF, buyer=buyer, payouts=payouts, fee=FEE)


def refund(buyer: User, cheater: User, *, cheater_pay: int, honest_pay: int, key: str = "fraud:1") -> None:
    money.fraud_refund(
        job_ref=REF, buyer=buyer, cheater=cheater, cheater_pay=cheater_pay, fee=FEE, honest_pay=honest_pay, key=key
    )


def test_a_fraud_refund_gives_the_buyer_everything_the_job_cost(alice: User, carol: User, dave: User) -> None:
    settled(alice, [(carol, 600), (dave, 300)])
    assert selectors.balances_of(user=alice).available == GRANT - 1_000
    refund(alice, carol, cheater_pay=600, honest_pay=300)
    assert selectors.balances_of(user=alice).available == GRANT, "600 reversed + the fee + 300 minted"
    assert selectors.pending_for_job(provider=carol, job_ref=REF) == 0
    assert selectors.pending_for_job(provider=dave, job_ref=REF) == 300, "the honest provider keeps its pay"
    assert selectors.platform_balance(kind=Kind.PLATFORM_FEES) == 0
    assert selectors.total_minted() == 3 * GRANT + 300
    assert_ledger_sound()


def test_a_fraud_refund_called_again_moves_nothing_more(alice: User, carol: User, dave: User) -> None:
    settled(alice, [(carol, 600), (dave, 300)])
    refund(alice, carol, cheater_pay=600, honest_pay=300)
    after_first = snapshot()
    refund(alice, carol, cheater_pay=600, honest_pay=300)
    assert snapshot() == after_first
    keys = set(
        Transaction.objects.filter(idempotency_key__contains="fraud:1").values_list("idempotency_key", flat=True)
    )
    assert keys == {"fraud:1:reversal", "fraud:1:fee", "mint:fraud:1:honest"}
    assert_ledger_sound()


def test_only_the_cheating_providers_lines_are_reversed_when_its_owner_runs_several(
    alice: User, carol: User, dave: User
) -> None:
    """carol ran two providers on the job, one of which cheated (its lines earned 400, her other one 200); dave's
    provider earned 300. Only the 400 is reversed; the honest 200 + 300 are paid to the buyer by the mint."""
    settled(alice, [(carol, 400), (carol, 200), (dave, 300)])
    assert selectors.pending_for_job(provider=carol, job_ref=REF) == 600
    refund(alice, carol, cheater_pay=400, honest_pay=500)
    assert selectors.pending_for_job(provider=carol, job_ref=REF) == 200
    assert selectors.pending_for_job(provider=dave, job_ref=REF) == 300
    assert selectors.balances_of(user=alice).available == GRANT
    assert_ledger_sound()
    # When the window closes carol is released what her honest provider earned, and no more.
    PendingRelease.objects.update(release_after=timezone.now() - timedelta(seconds=1))
    services.release_due_earnings(now=timezone.now())
    assert (selectors.balances_of(user=carol).pending, selectors.balances_of(user=carol).earnings) == (0, 200)
    assert selectors.balances_of(user=dave).earnings == 300
    assert_ledger_sound()


def test_a_reversal_never_takes_more_than_the_job_still_has_pending(alice: User, carol: User, dave: User) -> None:
    """The cheater's pay was released already (no hold kept it): nothing is reversed from its other jobs' pending
    pay; the buyer still gets the fee back and the honest pay."""
    settled(alice, [(carol, 600), (dave, 300)])
    services.escrow_for_job(user=dave, amount=5_000, job_ref="job-2")
    services.settle_job(job_ref="job-2", buyer=dave, payouts=[(carol, 700)], fee=0)  # carol's other job
    PendingRelease.objects.filter(job_ref=REF).update(release_after=timezone.now() - timedelta(seconds=1))
    services.release_due_earnings(now=timezone.now())
    refund(alice, carol, cheater_pay=600, honest_pay=300)
    assert selectors.pending_for_job(provider=carol, job_ref="job-2") == 700
    assert selectors.balances_of(user=carol).earnings == 600
    assert selectors.balances_of(user=alice).available == GRANT - 1_000 + FEE + 300
    assert not Transaction.objects.filter(idempotency_key="fraud:1:reversal").exists()
    assert_ledger_sound()


def test_a_fraud_refund_with_every_provider_cheating_mints_nothing(alice: User, carol: User) -> None:
    settled(alice, [(carol, 900)])
    minted = selectors.total_minted()
    refund(alice, carol, cheater_pay=900, honest_pay=0)
    assert selectors.total_minted() == minted
    assert selectors.balances_of(user=alice).available == GRANT
    assert_ledger_sound()
