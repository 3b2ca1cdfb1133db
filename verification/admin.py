"""Admin registrations of the verification app (none yet)."""
