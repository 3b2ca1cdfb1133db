"""Verification models: transcripts, commitments, audits, challenges and verdicts (none yet)."""
