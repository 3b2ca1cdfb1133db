"""Writes of the ledger. Every balance changes through `post` (posting.py); the rest builds on it:
issuance.py (mint, signup grant), jobs.py (escrow, refund, settlement), earnings.py (pending -> available).

Callers use `from ledger import services` and `services.<name>(...)`; keyword-only arguments, amounts in integer
base units, errors from config.errors / ledger.errors (InsufficientFunds 402, Conflict 409, InvalidInput 400,
OperatorOnly 403).
"""

from ledger.services.earnings import release_due_earnings, set_earnings_hold
from ledger.services.issuance import grant_signup_bonus, mint, mint_as_system
from ledger.services.jobs import challenge_window, escrow_for_job, refund_escrow, settle_job
from ledger.services.posting import MAX_AMOUNT, account_for, lock_accounts, post

__all__ = [
    "MAX_AMOUNT",
    "account_for",
    "challenge_window",
    "escrow_for_job",
    "grant_signup_bonus",
    "lock_accounts",
    "mint",
    "mint_as_system",
    "post",
    "refund_escrow",
    "release_due_earnings",
    "set_earnings_hold",
    "settle_job",
]
