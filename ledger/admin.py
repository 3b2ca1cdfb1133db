"""Admin registrations of the ledger app (none yet)."""
