"""Transcripts, commitments, audits and challenges, bisection, the referee and slashing."""
