"""Providers' commitments, stored as the provider consumer receives them (in batches, off the step's path)."""

from __future__ import annotations

import uuid

from verification.models import Commitment


def commitments_record(*, provider_id: int, commits: list[tuple[uuid.UUID, int, str]]) -> int:
    """Store commitments; a (session, step) already committed keeps its first root (a commitment is never
    changed afterwards). Returns how many were given."""
    rows = [Commitment(session=s, step=step, root=root, provider_id=provider_id) for s, step, root in commits]
    Commitment.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)
