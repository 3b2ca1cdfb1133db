"""Random audits: after a job is settled the server draws, per provider that served it, whether to audit the job.

The rate (permille) is the largest of: the floor (never below it, or a long clean record could be farmed and then
spent); the newcomer's rate until AUDIT_TRUST_AFTER clean checks in a row, or after any failure (BOINC's adaptive
replication); 1/N after N clean checks; and the deterrence bound. Cheating on a job saves a provider at most what it
is paid for it (it skips the work it is paid for); caught, it loses the slash and that pay. Cheating must not pay:
p · (slash + pay) > pay, so p > pay / (slash + pay); with a margin of two. The draw uses the operating system's
randomness after the job ended: a provider cannot know in advance which of its jobs will be checked.
"""

from __future__ import annotations

import secrets

from django.conf import settings

from market.models import Job, Provider
from verification.models import Dispute
from verification.services import disputes

DETERRENCE_MARGIN = 2


def audit_permille(provider: Provider, *, pay: int) -> int:
    floor = settings.AUDIT_FLOOR_PERMILLE
    trusted = provider.clean_streak >= settings.AUDIT_TRUST_AFTER and provider.audits_failed == 0
    record = max(floor, 1000 // max(provider.clean_streak, 1)) if trusted else settings.AUDIT_NEW_PERMILLE
    slash = max(settings.SLASH_AMOUNT, 1)
    pay = max(pay, 0)
    deterrence = -(-1000 * DETERRENCE_MARGIN * pay // (slash + pay))  # integer ceiling: exact at any amount
    return min(1000, max(floor, record, deterrence))


def job_audit_draw(*, job_id: int) -> Dispute | None:
    """Draw the audit of a settled job (at most once per job): one draw per provider that served it."""
    job = Job.objects.get(pk=job_id)
    if Dispute.objects.filter(job=job, kind=Dispute.Kind.AUDIT).exists() or job.settled_at is None:
        return None
    pay: dict[int, int] = {}
    for line in (job.cost or {}).get("lines", []):
        pay[int(line["provider"])] = pay.get(int(line["provider"]), 0) + int(line["provider_receipt"])
    served = {int(entry["provider"]) for entry in job.pipeline if entry.get("until_step")}
    for provider in Provider.objects.filter(pk__in=served).order_by("pk"):
        if secrets.randbelow(1000) < audit_permille(provider, pay=pay.get(provider.pk, 0)):
            return disputes.audit_open(job_id=job.pk)
    return None
