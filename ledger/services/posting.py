"""The core posting: validated, balanced, idempotent, under row locks taken in one global order.

Concurrency: a posting locks the rows of all the accounts it touches with select_for_update, in one global order
(users' accounts by pk, then the platform's by pk), before it reads a balance. One fixed order means two postings
may wait on each other but never deadlock. The one exception is a credit to a platform account, which needs no
balance check: it may be applied last, unlocked until then (post_lines), so that the fee account every settlement
credits is not held for the whole of each settlement.
Services that must check something against the ledger before posting (the escrow a job holds, the earnings still
pending) take the same locks first, check, then post under them (`post_lines(..., locked=...)`), so that the
check and the write see the same state.

Idempotency: each transaction has a unique key. Posting under a key that exists returns the existing transaction
and changes nothing, provided the payload is the same (same SHA-256 fingerprint); otherwise it is a Conflict.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import BooleanField, ExpressionWrapper, F, Q

from config.errors import Conflict, InvalidInput
from ledger.errors import InsufficientFunds
from ledger.models import Account, Entry, Transaction

Kind = Account.Kind
TxKind = Transaction.Kind

# Largest amount one entry may move, in base units: far above any real job, far below int64 overflow.
MAX_AMOUNT = 10**15
_INT64_MAX = 2**63 - 1

# Account pk -> signed amount (base units), netted: one line per account, none zero.
Lines = Mapping[int, int]


# --- validation ---------------------------------------------------------------------------------------------------


def amount_arg(name: str, value: object, *, allow_zero: bool = False) -> int:
    """`value` as an amount in base units, or InvalidInput: an int (not a bool) in [1 or 0, MAX_AMOUNT]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer number of base units, got {value!r}")
    low = 0 if allow_zero else 1
    if not low <= value <= MAX_AMOUNT:
        raise InvalidInput(f"{name} must be between {low} and {MAX_AMOUNT} base units, got {value}")
    return value


def text_arg(name: str, value: object, *, max_length: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        raise InvalidInput(f"{name} must be a non-empty string of at most {max_length} characters")
    return value


def user_arg(name: str, user: object) -> User:
    if not isinstance(user, User) or user.pk is None:
        raise InvalidInput(f"{name} must be a saved user")
    return user


# --- accounts -----------------------------------------------------------------------------------------------------


def _check_owner(owner: User | None, kind: str) -> None:
    if kind not in Kind.values:
        raise InvalidInput(f"unknown account kind {kind!r}")
    if (owner is None) != (kind in Account.PLATFORM_KINDS):
        owner_kind = "the platform" if kind in Account.PLATFORM_KINDS else "a user"
        raise InvalidInput(f"{kind} accounts belong to {owner_kind}")


def account_for(*, owner: User | None, kind: str) -> Account:
    """The account of `kind` for `owner` (None: the platform's), created empty on first use."""
    _check_owner(owner, kind)
    # get_or_create survives the race of two first uses: the loser's insert fails on the unique constraint
    # inside a savepoint and it reads the winner's row.
    account, _ = Account.objects.get_or_create(owner=owner, kind=kind)
    return account


def accounts_for(*wanted: tuple[User | None, str]) -> list[Account]:
    """The accounts for several (owner, kind) pairs, in the order asked, with one query when all exist already
    (a settlement names half a dozen); missing ones are opened as `account_for` does."""
    for owner, kind in wanted:
        _check_owner(owner, kind)
    owners = {owner.pk for owner, _ in wanted if owner is not None}
    rows = Account.objects.filter(Q(owner_id__in=owners) | Q(owner__isnull=True), kind__in={k for _, k in wanted})
    found = {(a.owner_id, a.kind): a for a in rows}
    return [
        found.get((owner.pk if owner else None, kind)) or account_for(owner=owner, kind=kind) for owner, kind in wanted
    ]


def lock_accounts(pks: Iterable[int]) -> dict[int, Account]:
    """Lock the accounts' rows in the one global order that rules out deadlocks: the users' accounts by pk, then
    the platform's (fees, bonds, mint) by pk. A transaction that holds a platform row therefore never waits for a
    user's row, which is what lets a settlement credit the fee account last without locking it first (post_lines).

    PostgreSQL locks the rows of `SELECT ... ORDER BY ... FOR UPDATE` in the sorted order. Call inside an atomic
    block; the locks last until it commits. (SQLite has no row locks: it serialises whole write transactions.)
    """
    wanted = set(pks)
    platform_last = ExpressionWrapper(Q(owner__isnull=True), output_field=BooleanField())
    rows = Account.objects.select_for_update().filter(pk__in=wanted).order_by(platform_last, "pk")
    locked = {a.pk: a for a in rows}
    if len(locked) != len(wanted):
        raise InvalidInput("a posting names an account that does not exist")
    return locked


# --- idempotency --------------------------------------------------------------------------------------------------


def fingerprint(*, kind: str, job_ref: str, lines: Lines, intent: Mapping[str, Any] | None = None) -> str:
    """SHA-256 of what a posting asks for: the intent when given (postings whose split depends on balances),
    else the kind, job and netted lines. The memo is a note for people and not part of it."""
    payload = intent if intent is not None else {"kind": kind, "job_ref": job_ref, "lines": sorted(lines.items())}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def existing(key: str, fingerprint: str) -> Transaction | None:
    """The transaction already posted under `key`, if any; a Conflict if it was posted with another payload."""
    found = Transaction.objects.filter(idempotency_key=key).first()
    if found is not None and found.fingerprint != fingerprint:
        raise Conflict(f"idempotency key {key!r} was already used for a different {found.kind} transaction")
    return found


def replay(
    *, key: str, kind: str, job_ref: str, lines: Lines, intent: Mapping[str, Any] | None = None
) -> Transaction | None:
    """`existing` for the posting these arguments describe (call it after taking the locks)."""
    return existing(key, fingerprint(kind=kind, job_ref=job_ref, lines=lines, intent=intent))


# --- posting ------------------------------------------------------------------------------------------------------


def net_lines(entries: Sequence[tuple[Account, int]]) -> dict[int, int]:
    """Validate entries and net them per account; zero amounts are refused, accounts that net to zero dropped."""
    if isinstance(entries, str | bytes) or not isinstance(entries, Sequence):
        raise InvalidInput("entries must be a list of (account, amount) pairs")
    lines: dict[int, int] = {}
    for account, amount in entries:
        if not isinstance(account, Account) or account.pk is None:
            raise InvalidInput("each entry needs a saved account")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount == 0:
            raise InvalidInput(f"each entry must move a non-zero integer amount, got {amount!r}")
        amount_arg("entry amount", abs(amount))
        lines[account.pk] = lines.get(account.pk, 0) + amount
    if (total := sum(lines.values())) != 0:
        raise InvalidInput(f"entries must sum to zero, they sum to {total}")
    lines = {pk: amount for pk, amount in lines.items() if amount != 0}
    if len(lines) < 2:
        raise InvalidInput("a transaction needs at least two entries on different accounts")
    return lines


def post(
    *,
    kind: str,
    idempotency_key: str,
    entries: Sequence[tuple[Account, int]],
    memo: str = "",
    job_ref: str = "",
) -> Transaction:
    """Post one balanced transaction: two or more (account, signed amount) entries summing to zero.

    Idempotent under `idempotency_key`. Refuses (InsufficientFunds, nothing written) to take any account but the
    mint below zero. The cached balances change under row locks; the Account objects passed in are not refreshed.
    """
    if kind not in TxKind.values:
        raise InvalidInput(f"unknown transaction kind {kind!r}")
    return post_lines(kind=kind, key=idempotency_key, lines=net_lines(entries), memo=memo, job_ref=job_ref)


def post_lines(
    *,
    kind: str,
    key: str,
    lines: Lines,
    memo: str = "",
    job_ref: str = "",
    intent: Mapping[str, Any] | None = None,
    locked: Mapping[int, Account] | None = None,
) -> Transaction:
    """`post` on validated, netted lines. With `locked`, the caller holds these rows (taken with lock_accounts in
    its own atomic block) and has already looked for the key after locking.

    A line whose account the caller left out of `locked` must be a credit to a platform account: it is added with
    one `UPDATE ... SET balance = balance + n` as the posting's last write. A credit needs no balance check, and
    the platform's fee account, credited by every settlement, is then locked only from that statement to the
    commit instead of for the whole settlement (see lock_accounts for why this cannot deadlock).
    """
    key = text_arg("idempotency key", key, max_length=200)
    job_ref = text_arg("job_ref", job_ref, max_length=64) if job_ref else ""
    print_ = fingerprint(kind=kind, job_ref=job_ref, lines=lines, intent=intent)
    # A caller that holds the locks has its own atomic block (a savepoint if nested): no second savepoint here.
    with transaction.atomic(savepoint=locked is None):
        if locked is None:
            if (found := existing(key, print_)) is not None:
                return found
            locked = lock_accounts(lines)
            # A posting with this key may have committed while we waited: it locked the same rows.
            if (found := existing(key, print_)) is not None:
                return found
        changed = [_apply(locked[pk], amount) for pk, amount in lines.items() if pk in locked]
        late = sorted((pk, amount) for pk, amount in lines.items() if pk not in locked)
        tx = _insert_transaction(kind=kind, key=key, fingerprint=print_, memo=memo[:500], job_ref=job_ref)
        if tx.pk is None:  # an identical posting on other rows won the key: it is written already
            return Transaction.objects.get(idempotency_key=key)
        Entry.objects.bulk_create(Entry(transaction=tx, account_id=pk, amount=amount) for pk, amount in lines.items())
        Account.objects.bulk_update(changed, ["balance"])
        for pk, amount in late:
            _credit_platform(pk, amount)
    return tx


def _credit_platform(pk: int, amount: int) -> None:
    """Add a credit to a platform account's cached balance in place (its row lock is taken here, last)."""
    platform = Account.objects.filter(pk=pk, owner__isnull=True).exclude(kind=Kind.MINT)
    if amount <= 0 or platform.update(balance=F("balance") + amount) != 1:
        raise InvalidInput("only a credit to a platform account may be posted without locking it first")


def _apply(account: Account, amount: int) -> Account:
    after = account.balance + amount
    if account.kind == Kind.MINT:
        if after > 0:
            raise InvalidInput("cannot return more to the mint than was minted")
    elif account.kind == Kind.BRIDGE:
        pass  # tokens enter (deposits) and leave (withdrawals, which may include minted tokens) through it
    elif after < 0:
        raise InsufficientFunds(
            f"{account.get_kind_display()} holds {account.balance} base units; {-amount} are needed"
        )
    if abs(after) > _INT64_MAX:
        raise InvalidInput("the balance would overflow")
    account.balance = after
    return account


def _insert_transaction(*, kind: str, key: str, fingerprint: str, memo: str, job_ref: str) -> Transaction:
    try:
        # A savepoint: a concurrent posting on other rows may insert this key first (PostgreSQL makes this
        # insert wait for it to commit, then fail on the unique constraint).
        with transaction.atomic():
            return Transaction.objects.create(
                kind=kind, idempotency_key=key, fingerprint=fingerprint, memo=memo, job_ref=job_ref
            )
    except IntegrityError:
        if existing(key, fingerprint) is None:  # a Conflict if the winner's payload differs
            raise
        return Transaction(idempotency_key=key)  # unsaved: tells post_lines the identical posting exists
