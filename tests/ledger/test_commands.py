"""The operator's commands: grant_tokens, and ledger_check that fails loudly on drift."""

from __future__ import annotations

from io import StringIO
from typing import TYPE_CHECKING

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, ManagementUtility, call_command
from django.db.models import F

from ledger import services
from ledger.models import Account, Entry, Transaction

if TYPE_CHECKING:  # the fixtures' types (pytest loads conftest itself; never imported at run time)
    from tests.ledger.conftest import Books

Kind = Account.Kind

pytestmark = pytest.mark.django_db


def _run(*argv: str) -> str:
    out = StringIO()
    call_command(*argv, stdout=out)
    return out.getvalue()


def _check_exit(capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run `manage.py ledger_check` as the shell would (in this process, on the test database)."""
    try:
        ManagementUtility(["manage.py", "ledger_check"]).execute()
        code = 0
    except SystemExit as exited:  # how manage.py reports a CommandError to the shell
        code = int(exited.code or 0)
    return code, capsys.readouterr().err


def test_grant_tokens_mints_to_the_named_user(bob: User, books: Books) -> None:
    out = _run("grant_tokens", "bob", "1234")
    assert "granted 1234 base units to 'bob'" in out
    _run("grant_tokens", "bob", "1000")
    assert books.balance(bob, Kind.USER_AVAILABLE) == 2_234


def test_grant_tokens_with_a_key_grants_once(bob: User, books: Books) -> None:
    _run("grant_tokens", "bob", "500", "--key", "seed-1")
    out = _run("grant_tokens", "bob", "500", "--key", "seed-1")
    assert "already granted" in out
    assert books.balance(bob, Kind.USER_AVAILABLE) == 500


def test_grant_tokens_refuses_unknown_users_and_bad_amounts(bob: User, books: Books) -> None:
    with pytest.raises(CommandError, match="no user 'nobody'"):
        _run("grant_tokens", "nobody", "10")
    for bad in ("0", "-5"):
        with pytest.raises(CommandError, match="between 1 and"):
            _run("grant_tokens", "bob", bad)
    assert books.state().transactions == 0
    assert not User.objects.filter(username="nobody").exists()


def test_grant_tokens_can_create_the_user(books: Books) -> None:
    _run("grant_tokens", "dora", "700", "--create")
    assert books.balance(User.objects.get(username="dora"), Kind.USER_AVAILABLE) == 700


def _busy_ledger(alice: User, bob: User) -> None:
    services.escrow_for_job(user=alice, amount=1_000, job_ref="j1")
    services.settle_job(job_ref="j1", buyer=alice, payouts=[(bob, 600)], fee=40)


def test_ledger_check_passes_on_a_clean_ledger(alice: User, bob: User, capsys: pytest.CaptureFixture[str]) -> None:
    _busy_ledger(alice, bob)
    out = _run("ledger_check")
    assert "ledger ok" in out and "= minted 10000" in out
    assert _check_exit(capsys) == (0, "")


def test_ledger_check_fails_when_a_balance_is_tampered_with(
    alice: User, bob: User, capsys: pytest.CaptureFixture[str]
) -> None:

    _busy_ledger(alice, bob)
    pending = Account.objects.get(owner=bob, kind=Kind.PROVIDER_PENDING)
    Account.objects.filter(pk=pending.pk).update(balance=F("balance") + 7)  # behind the services' back
    code, err = _check_exit(capsys)
    assert code != 0
    assert "drift +7" in err
    assert f"account {pending.pk} (provider_pending:{bob.pk}): cached balance 607, entries sum to 600" in err


def test_ledger_check_fails_when_money_is_moved_without_entries(alice: User, bob: User) -> None:
    _busy_ledger(alice, bob)
    # The sum still matches what was minted, but two cached balances no longer match their entries.
    Account.objects.filter(owner=alice, kind=Kind.USER_AVAILABLE).update(balance=F("balance") - 100)
    Account.objects.filter(owner=bob, kind=Kind.PROVIDER_PENDING).update(balance=F("balance") + 100)
    with pytest.raises(CommandError, match=r"drift \+0\); 2 account\(s\) disagree"):
        _run("ledger_check")


def test_ledger_check_fails_on_an_unbalanced_transaction(alice: User, bob: User) -> None:
    _busy_ledger(alice, bob)
    tx = Transaction.objects.get(kind=Transaction.Kind.SETTLEMENT)
    stake = services.account_for(owner=bob, kind=Kind.STAKE)
    Entry.objects.create(transaction=tx, account=stake, amount=5)  # an extra leg, written behind the services' back
    with pytest.raises(CommandError, match=f"transaction {tx.pk}: entries do not sum to zero"):
        _run("ledger_check")
