"""Verification's reads: a job's verification state (API and stream), a provider's audits and verdicts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.models import User

from market import selectors as market_selectors
from market.models import Job, Provider
from verification.models import Dispute, Transcript


def dispute_view(dispute: Dispute) -> dict[str, Any]:
    return {
        "id": dispute.pk,
        "job": dispute.job_id,
        "kind": dispute.kind,
        "state": dispute.state,
        "step": dispute.step,
        "hop": dispute.hop,
        "provider": dispute.provider_id,
        "layer": dispute.layer,
        "reason": dispute.reason,
        "evidence": dispute.evidence,
        "evidence_hash": dispute.evidence_hash,
        "bond": dispute.bond,
        "reveal_deadline": dispute.deadline if dispute.state == Dispute.State.REVEALING else None,
        "referee": dispute.referee,
        "created_at": dispute.created_at,
        "decided_at": dispute.decided_at,
    }


def job_verification(job: Job) -> dict[str, Any]:
    """Where a job stands: its window, its transcript's size, its audits and challenges with their verdicts.
    `state`: unchecked (no dispute), checking (one open), fraud (any proven) or verified (all no fraud)."""
    disputes = list(Dispute.objects.filter(job=job).order_by("pk"))
    transcript = Transcript.objects.filter(job=job).only("size_bytes", "steps", "keep_until").first()
    if any(d.state == Dispute.State.FRAUD for d in disputes):
        state = "fraud"
    elif any(d.state not in Dispute.CLOSED for d in disputes):
        state = "checking"
    else:
        state = "verified" if disputes else "unchecked"
    window = job.settled_at + timedelta(seconds=settings.CHALLENGE_WINDOW_SECONDS) if job.settled_at else None
    tokens = max(1, job.prompt_tokens + len(job.tokens))
    return {
        "job": job.pk,
        "state": state,
        "challenge_window_closes_at": window,
        "challenge_bond": settings.CHALLENGE_BOND,
        "transcript_bytes": transcript.size_bytes if transcript else None,
        "transcript_bytes_per_token": round(transcript.size_bytes / tokens, 1) if transcript else None,
        "disputes": [dispute_view(d) for d in disputes],
    }


def job_verification_for_buyer(*, buyer: User, job_id: int) -> dict[str, Any]:
    return job_verification(market_selectors.job_for_buyer(buyer=buyer, job_id=job_id))


def provider_audits(*, user: User) -> dict[str, Any]:
    """A user's providers' record: checks passed and failed, barred or not, and every dispute about their work."""
    providers = list(Provider.objects.filter(user=user).order_by("pk"))
    disputes = Dispute.objects.filter(provider__in=providers).order_by("-pk")[:100]
    return {
        "providers": [
            {
                "id": p.pk,
                "name": p.name,
                "audits_passed": p.audits_passed,
                "audits_failed": p.audits_failed,
                "clean_streak": p.clean_streak,
                "barred": p.barred,
                "reliability_permille": p.reliability_permille,
            }
            for p in providers
        ],
        "disputes": [dispute_view(d) for d in disputes],
    }


def publish_verification(job_id: int) -> None:
    """Tell the job's stream (from sync code, after commit) that its verification state changed."""
    job = Job.objects.get(pk=job_id)
    event = {"type": "job.verification", "verification": jsonable(job_verification(job))}
    async_to_sync(get_channel_layer().group_send)(market_selectors.job_group(job_id), event)


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
