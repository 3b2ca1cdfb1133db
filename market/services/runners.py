"""A job outlives the server that ran it: runners hold a lease on their jobs, and a job whose lease ran out is taken
over and resumed by another runner, or ended within a bounded time.

The runner renews `Job.runner_seen_at` every RUNNER_HEARTBEAT_SECONDS. When a server dies (SIGKILL, power), its
runners stop renewing. After RUNNER_LEASE_SECONDS the next check (any server's clock, or an auction round in Celery)
closes the dead runner's placements at the tokens the buyer got (the stored tokens: those steps are paid at the
cleared prices, the step in flight is not), frees their slots and closes their sessions. Then:

- **resume**: once providers are free for every shard, the job's `runner_epoch` is raised and a new runner starts
  (`market.scheduling.job_resume`): it places a fresh pipeline, replays the prompt and the stored tokens through it to
  rebuild every hop's KV cache (as after a provider failover; the replay is not charged), and generates on from
  the next token. The buyer's stream goes on where it stopped. The epoch fences the old runner: were it only slow,
  its lease, stores and finish no longer match, and it stops.
- **end**: a job cancelled while its runner was dead, one resumed RUNNER_MAX_RESUMES times already, or one that
  found no free pipeline within RUNNER_RESUME_WITHIN_SECONDS after its lease ran out fails with `runner_lost`: the
  tokens delivered are paid, the rest of the escrow goes back, the buyer's stream gets its final event.
"""

from __future__ import annotations

import collections
import functools
import logging
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from market import quotes, selectors
from market.models import Job, Provider
from market.services.jobs import job_publish_end, provider_release
from market.services.settlement import RUNNER_LOST, job_settle
from transport.messages import ProviderClose

log = logging.getLogger(__name__)


def job_runner_beat(*, job_id: int, epoch: int = 0) -> bool:
    """Renew a running job's lease; False once the job is no longer running or another runner took it over (then the
    runner stops)."""
    renewed = Job.objects.filter(pk=job_id, state=Job.State.RUNNING, runner_epoch=epoch)
    return bool(renewed.update(runner_seen_at=timezone.now()))


def job_resume_claim(*, job_id: int, epoch: int) -> Job | None:
    """The job a takeover handed to a new runner (`epoch` is the one it was given); None when it ended meanwhile or
    was taken over again."""
    claimed = Job.objects.filter(pk=job_id, state=Job.State.RUNNING, runner_epoch=epoch)
    if not claimed.update(runner_seen_at=timezone.now()):
        return None
    return Job.objects.select_related("model").get(pk=job_id)


def jobs_orphaned(*, now: datetime) -> list[tuple[int, int]]:
    """Take over or end every job whose runner's lease ran out; the (job, epoch) pairs to resume, for
    `market.scheduling.job_resume` once the transaction that took them over has committed."""
    stale = now - timedelta(seconds=settings.RUNNER_LEASE_SECONDS)
    lost = Q(runner_seen_at__lt=stale) | Q(runner_seen_at__isnull=True, started_at__lt=stale)
    running = Q(state=Job.State.RUNNING) | Q(state=Job.State.CANCELLED, started_at__isnull=False, finished_at=None)
    resumed: list[tuple[int, int]] = []
    ended: list[int] = []
    for job_id in Job.objects.filter(running, lost).values_list("pk", flat=True):
        epoch = _take_over(job_id, now)
        if epoch:
            resumed.append((job_id, epoch))
        elif epoch == 0:
            ended.append(job_id)
    if resumed:
        log.warning("taking over %d job(s) whose runner was lost: %s", len(resumed), [job for job, _ in resumed])
    if ended:
        log.warning("ended %d job(s) whose runner was lost: %s", len(ended), ended)
    return resumed


def _take_over(job_id: int, now: datetime) -> int | None:
    """The new epoch of a job taken over for a resume, 0 for a job ended, None for one left (its runner finished it
    meanwhile, or no pipeline is free yet and there is still time to wait for one)."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.finished_at is not None or job.state not in (Job.State.RUNNING, Job.State.CANCELLED):
            return None
        renewed = job.runner_seen_at or job.started_at or now
        lost_at = renewed + timedelta(seconds=settings.RUNNER_LEASE_SECONDS)
        resumable = job.state == Job.State.RUNNING and job.runner_epoch < settings.RUNNER_MAX_RESUMES
        if resumable and (now - lost_at).total_seconds() < settings.RUNNER_RESUME_WITHIN_SECONDS:
            # Its server died no later than one renewal after the last one: providers heard from since are alive.
            died_by = renewed + timedelta(seconds=settings.RUNNER_HEARTBEAT_SECONDS)
            if not _pipeline_free(job, heard_since=died_by):
                # Nothing changes while it waits: were its runner only slow, it renews its lease and goes on.
                return None  # the next check tries again; the bound above ends the wait
            entries = _close_placements(job)
            transaction.on_commit(functools.partial(_close_sessions, entries))
            Job.objects.filter(pk=job.pk).update(
                pipeline=job.pipeline, runner_epoch=F("runner_epoch") + 1, runner_seen_at=now, runner_lost_at=died_by
            )
            return job.runner_epoch + 1
        entries = _close_placements(job)
        transaction.on_commit(functools.partial(_close_sessions, entries))
        fields: dict[str, Any] = {"pipeline": job.pipeline, "finished_at": now}
        if job.state == Job.State.RUNNING:
            fields |= {
                "state": Job.State.FAILED,
                "error_code": RUNNER_LOST,
                "error": f"the server running this job stopped; the {len(job.tokens)} token(s) delivered are paid at "
                "the cleared prices and the rest of the escrow is refunded",
            }
        Job.objects.filter(pk=job.pk).update(**fields)
        job_settle(job_id=job.pk)
        transaction.on_commit(functools.partial(job_publish_end, job.pk))
    return 0


def _close_placements(job: Job) -> list[dict[str, Any]]:
    """End the dead runner's open placements at the steps that reached the buyer (steps 0 .. delivered - 1 went
    through every hop) and free their slots; the placements closed."""
    delivered = len(job.tokens)
    entries = [entry for entry in job.pipeline if entry.get("until_step") is None]
    for entry in entries:
        entry["until_step"] = max(entry["from_step"], delivered)
        entry["ended"] = RUNNER_LOST
        if entry.get("channel"):
            provider_release(provider_id=entry["provider"], channel_name=entry["channel"])
    return entries


def _pipeline_free(job: Job, *, heard_since: datetime) -> bool:
    """Whether distinct providers heard from since `heard_since` can serve every shard of the job, counting the slots
    its lost runner holds as free (they are freed when it is taken over)."""
    held = collections.Counter(
        (entry["provider"], entry.get("channel")) for entry in job.pipeline if entry.get("until_step") is None
    )
    free = selectors.providers_free(exclude=set(), heard_since=heard_since, holding=held)
    try:
        quotes.cheapest_pipeline(model=job.model, providers=[p for p in free if p.ns_per_layer_token is not None])
    except quotes.NoPipeline:
        return False
    return True


def _close_sessions(entries: list[dict[str, Any]]) -> None:
    """Ask the providers still connected to close the sessions the dead runner left open (frees their memory)."""
    layer = get_channel_layer()
    channels = dict(Provider.objects.filter(pk__in=[e["provider"] for e in entries]).values_list("pk", "channel_name"))
    for entry in entries:
        channel = channels.get(entry["provider"])
        if channel and channel == entry.get("channel"):
            async_to_sync(layer.send)(channel, ProviderClose(session=entry["session"]).event())
