"""Issuing tokens: the operator's mint, the platform's own grants (signup, development)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction

from ledger.errors import OperatorOnly
from ledger.models import Transaction
from ledger.services.posting import Kind, TxKind, account_for, amount_arg, post_lines, text_arg, user_arg
from ledger.services.vault import issue_backing


def mint(*, to_user: User, amount: int, key: str, by: User, memo: str = "") -> Transaction:
    """Issue `amount` new tokens to `to_user`'s available balance. Only the operator (an active staff user)."""
    if not (getattr(by, "is_active", False) and getattr(by, "is_staff", False)):  # anonymous too
        raise OperatorOnly("only the operator (a staff user) may mint tokens")
    return mint_as_system(to_user=to_user, amount=amount, key=key, memo=memo or f"minted by {by.get_username()}")


def mint_as_system(*, to_user: User, amount: int, key: str, memo: str = "") -> Transaction:
    """Issue tokens on the platform's own authority: for management commands and signup grants, never on behalf
    of a request (use `mint` there). Idempotent per `key`."""
    to_user = user_arg("to_user", to_user)
    amount = amount_arg("amount", amount)
    key = "mint:" + text_arg("key", key, max_length=180)
    issuer = account_for(owner=None, kind=Kind.MINT)
    available = account_for(owner=to_user, kind=Kind.USER_AVAILABLE)
    with transaction.atomic():
        tx = post_lines(kind=TxKind.MINT, key=key, lines={issuer.pk: -amount, available.pk: amount}, memo=memo)
        # With a chain, every base unit the ledger holds is a token in the vault: queue the vault's issue of these
        # (in this transaction, so a crash cannot leave the mint unbacked).
        issue_backing(mint_tx=tx, amount=amount)
    return tx


def grant_signup_bonus(*, user: User) -> Transaction | None:
    """A new account's starter grant (settings.SIGNUP_GRANT base units), once per user.

    None when `CONTRIBUTE_TO_USE` is on (a new account starts with nothing and earns by providing) or the grant is
    0. The market calls this when it creates a user; calling it again grants nothing more.
    """
    user = user_arg("user", user)
    if settings.CONTRIBUTE_TO_USE:
        return None
    amount = amount_arg("SIGNUP_GRANT", settings.SIGNUP_GRANT, allow_zero=True)
    if amount == 0:
        return None
    return mint_as_system(to_user=user, amount=amount, key=f"signup:{user.pk}", memo="signup grant")
