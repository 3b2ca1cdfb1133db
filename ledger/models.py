"""Ledger models: accounts, double-entry transactions, escrow and settlement batches (none yet)."""
