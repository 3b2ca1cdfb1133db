"""A job outlives the server that ran it: runners hold a lease on their jobs, and a job whose lease ran out is
ended by the next auction round (any server's clock, or Celery's).

The runner renews `Job.runner_seen_at` every RUNNER_HEARTBEAT_SECONDS. When a server dies (SIGKILL, power), its
runners stop renewing; after RUNNER_LEASE_SECONDS the round ends each of their jobs within a bounded time: the
steps that went through every hop and reached the buyer (the stored tokens) are paid at the cleared prices, the
step in flight is not, the rest of the escrow goes back, the providers' sessions are closed and their slots freed,
and the buyer's stream gets its final event. A job the buyer cancelled while its runner was dead is ended the same
way. (Resuming such a job on another server by replay is not built: see the README.)
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from market.models import Job, Provider
from market.services.jobs import job_publish_end, provider_release
from market.services.settlement import job_settle

log = logging.getLogger(__name__)
RUNNER_LOST = "runner_lost"


def job_runner_beat(*, job_id: int) -> bool:
    """Renew a running job's lease; False once the job is no longer running (then the runner stops beating)."""
    return bool(Job.objects.filter(pk=job_id, state=Job.State.RUNNING).update(runner_seen_at=timezone.now()))


def jobs_orphaned_end(*, now: datetime) -> list[int]:
    """End every job whose runner's lease ran out; the ids ended."""
    stale = now - timedelta(seconds=settings.RUNNER_LEASE_SECONDS)
    lost = Q(runner_seen_at__lt=stale) | Q(runner_seen_at__isnull=True, started_at__lt=stale)
    running = Q(state=Job.State.RUNNING) | Q(state=Job.State.CANCELLED, started_at__isnull=False, finished_at=None)
    ended = [job_id for job_id in Job.objects.filter(running, lost).values_list("pk", flat=True) if _end(job_id, now)]
    if ended:
        log.warning("ended %d job(s) whose runner was lost: %s", len(ended), ended)
    return ended


def _end(job_id: int, now: datetime) -> bool:
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.finished_at is not None or job.state not in (Job.State.RUNNING, Job.State.CANCELLED):
            return False  # its runner finished it meanwhile
        delivered = len(job.tokens)  # steps 0 .. delivered - 1 went through every hop and reached the buyer
        open_entries = [entry for entry in job.pipeline if entry.get("until_step") is None]
        for entry in open_entries:
            entry["until_step"] = max(entry["from_step"], delivered)
            entry["ended"] = RUNNER_LOST
        fields: dict[str, Any] = {"pipeline": job.pipeline, "finished_at": now}
        if job.state == Job.State.RUNNING:
            fields |= {
                "state": Job.State.FAILED,
                "error_code": RUNNER_LOST,
                "error": f"the server running this job stopped; the {delivered} token(s) delivered are paid at the "
                "cleared prices and the rest of the escrow is refunded",
            }
        Job.objects.filter(pk=job.pk).update(**fields)
        for entry in open_entries:
            if entry.get("channel"):
                provider_release(provider_id=entry["provider"], channel_name=entry["channel"])
        job_settle(job_id=job.pk)
        transaction.on_commit(functools.partial(_close_sessions, open_entries))
        transaction.on_commit(functools.partial(job_publish_end, job.pk))
    return True


def _close_sessions(entries: list[dict[str, Any]]) -> None:
    """Ask the providers still connected to close the sessions the dead runner left open (frees their memory)."""
    layer = get_channel_layer()
    channels = dict(Provider.objects.filter(pk__in=[e["provider"] for e in entries]).values_list("pk", "channel_name"))
    for entry in entries:
        channel = channels.get(entry["provider"])
        if channel and channel == entry.get("channel"):
            async_to_sync(layer.send)(channel, {"type": "provider.close", "session": entry["session"]})
