"""Ledger errors: subclasses of the project's one hierarchy (config/errors.py), each with a stable code."""

from __future__ import annotations

from config.errors import MarketError


class InsufficientFunds(MarketError):
    """A posting would take a user's, provider's or platform account below zero. Nothing was written."""

    code = "insufficient_funds"
    status = 402


class OperatorOnly(MarketError):
    """Only staff (the operator) may do this, e.g. mint tokens."""

    code = "operator_only"
    status = 403
