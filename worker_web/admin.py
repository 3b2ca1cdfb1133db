"""Admin registrations of the worker_web app (none yet)."""
