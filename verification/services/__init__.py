"""Verification's writes: transcripts.py (record, load, expire), audits.py (who is checked, how often),
disputes.py (challenges, the referee's phases, reveals), verdicts.py (what a verdict moves, once)."""
