"""Provider-side models: connected provider sessions and benchmark results (none yet)."""
