"""Accounts, double-entry transactions, escrow, settlement and the bridge to the chain."""
