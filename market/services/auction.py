"""Clearing the market: one auction round over the open bids and the providers' free capacity.

A round (`clear_market`) expires the bids past their expiry (refunded), puts placed jobs whose runner never
started back into the book, settles any finished job that is not settled yet, builds the book, solves it
(`market.auction.solve`), records an AuctionRound, and places each winner: in one transaction per job it claims
a slot on each of its providers (conditional UPDATEs, as the runner's own claims) and writes the Assignment rows
with their cleared prices. A winner whose slot was taken meanwhile stays in the book. Losers stay too, one
priority level higher. Placed jobs are handed to their runners after commit.

Rounds never overlap: PostgreSQL's advisory lock across processes (beat's tick and the nudges), a process lock on
the embedded profile, where only the server clears.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from market import overview, quotes, scheduling, selectors
from market.auction import Allocation, Book, JobBid, ProviderOffer, ShardDemand, Trade, solve
from market.models import Assignment, AuctionRound, Job, Provider, Shard
from market.services.jobs import assignments_release, job_publish_end
from market.services.runners import jobs_orphaned
from market.services.settlement import job_settle

log = logging.getLogger(__name__)
_LOCAL_LOCK = threading.Lock()
_ADVISORY_KEY = 0x6D61726B6574  # "market"
MEMORY_UNKNOWN = 2**50  # a provider that reports no memory budget is limited by its slots alone


@contextlib.contextmanager
def _clearing_lock() -> Iterator[bool]:
    """True when this caller may clear now; a round already in progress elsewhere makes it False (no waiting:
    the round in progress sees the same book)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [_ADVISORY_KEY])
            got = bool(cursor.fetchone()[0])
        try:
            yield got
        finally:
            if got:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [_ADVISORY_KEY])
        return
    got = _LOCAL_LOCK.acquire(blocking=False)
    try:
        yield got
    finally:
        if got:
            _LOCAL_LOCK.release()


def clear_market(*, solver: str | None = None, now: datetime | None = None) -> AuctionRound | None:
    """Run one round; None when another is in progress or the book is empty."""
    with _clearing_lock() as got:
        if not got:
            return None
        now = now or timezone.now()
        expired = bids_expire(now=now)
        allocations_reclaim(now=now)
        resumed = jobs_orphaned(now=now)
        transaction.on_commit(functools.partial(_resume_all, resumed))
        settle_unsettled()
        return _round(solver=solver or settings.AUCTION_SOLVER, expired=expired)


def bids_expire(*, now: datetime) -> int:
    """Open bids past their expiry become expired and are refunded (their streams end)."""
    count = 0
    for job_id in Job.objects.filter(state=Job.State.QUEUED, expires_at__lt=now).values_list("pk", flat=True):
        fields = {"state": Job.State.EXPIRED, "finished_at": now, "error_code": "expired"}
        fields["error"] = "no providers took the bid before it expired; its escrow was refunded"
        if Job.objects.filter(pk=job_id, state=Job.State.QUEUED).update(**fields):
            job_settle(job_id=job_id)
            transaction.on_commit(functools.partial(job_publish_end, job_id))
            count += 1
    return count


def allocations_reclaim(*, now: datetime) -> int:
    """Placed jobs whose runner never started (a lost task, a worker that died) go back into the book one priority
    level up after ALLOCATION_TIMEOUT_SECONDS, and the slots their round claimed are freed."""
    stale = now - timedelta(seconds=settings.ALLOCATION_TIMEOUT_SECONDS)
    count = 0
    for job in Job.objects.filter(state=Job.State.ALLOCATED, auction_round__created_at__lt=stale):
        with transaction.atomic():
            if not Job.objects.filter(pk=job.pk, state=Job.State.ALLOCATED).update(
                state=Job.State.QUEUED, priority=F("priority") + 1, error="its runner did not start; back in the book"
            ):
                continue  # its runner claimed it, or the buyer cancelled it, meanwhile
            assignments_release(job_id=job.pk, round_id=job.auction_round_id)
            count += 1
    if count:
        log.warning("%d placed job(s) whose runner never started went back into the book", count)
    return count


def settle_unsettled() -> int:
    """Settle finished jobs whose runner ended before it could (a crash, a lost worker): settling is idempotent."""
    finished = Job.objects.filter(state__in=Job.FINAL_STATES, settled_at__isnull=True).values_list("pk", flat=True)
    job_ids = list(finished[:500])
    for job_id in job_ids:
        job_settle(job_id=job_id)
    return len(job_ids)


def _round(*, solver: str, expired: int) -> AuctionRound | None:
    jobs = list(
        Job.objects.filter(state=Job.State.QUEUED)
        .select_related("model")
        .order_by("-priority", "created_at", "pk")[: settings.AUCTION_MAX_BOOK]
    )
    if not jobs:
        return None
    chains: dict[int, list[Shard]] = {}
    bids = []
    for job in jobs:
        if job.model_id not in chains:
            chains[job.model_id] = selectors.shard_chain(model=job.model, plan=None)
        bids.append(job_bid(job, chains[job.model_id]))
    providers = {p.pk: p for p in selectors.providers_free(exclude=set()) if p.ns_per_layer_token is not None}
    offers = [provider_offer(p) for p in providers.values()]
    allocation = solve(
        Book(bids, offers),
        solver=solver,  # type: ignore[arg-type]  # checked by solve
        time_limit_s=settings.AUCTION_TIME_LIMIT_SECONDS,
        fee_bps=settings.MARKET_FEE_BPS,
    )
    shards = {s.shard_id: s for chain in chains.values() for s in chain}
    with transaction.atomic():
        round_ = _record(allocation, expired=expired)
        placed = [
            int(job_id)
            for job_id, trades in allocation.winners.items()
            if _place(round_, int(job_id), trades, providers, shards)
        ]
        unplaced = [int(j) for j in allocation.losers] + [int(j) for j in allocation.winners if int(j) not in placed]
        Job.objects.filter(pk__in=unplaced, state=Job.State.QUEUED).update(priority=F("priority") + 1)
        lost = set(unplaced)
        _explain_losers([job for job in jobs if job.pk in lost], list(providers.values()))
        AuctionRound.objects.filter(pk=round_.pk).update(n_placed=len(placed))
        round_.n_placed = len(placed)
        transaction.on_commit(lambda: _launch_all(placed))
        # Every dashboard hears of the round once it is visible (built once for all; a failure only logs).
        transaction.on_commit(functools.partial(overview.publish_round, round_.pk), robust=True)
    if allocation.winners or expired:
        log.info("round %s: %d/%d bids placed by %s", round_.pk, len(placed), len(bids), allocation.solver)
    return round_


def _explain_losers(losers: list[Job], providers: list[Provider]) -> None:
    """Tell each bid that lost the round why (on the job, which the API and the stream's snapshot show): the cheapest
    feasible pipeline's cost against its maximum, or the shard nobody free can serve, or competing bids."""
    pipelines: dict[int, quotes.Quote | str] = {}
    for job in losers:
        if job.model_id not in pipelines:
            try:
                pipelines[job.model_id] = quotes.cheapest_pipeline(model=job.model, providers=providers)
            except quotes.NoPipeline as exc:
                pipelines[job.model_id] = str(exc)
        pipeline = pipelines[job.model_id]
        if isinstance(pipeline, str):
            reason = f"lost the round: {pipeline}"
        else:
            cost = pipeline.price(job.prompt_tokens + job.max_new_tokens)
            if cost > job.max_price:
                reason = (
                    f"lost the round: the cheapest pipeline free now asks {cost} base units for this job's "
                    f"{job.prompt_tokens + job.max_new_tokens} tokens, more than its maximum of {job.max_price} "
                    "(GET /api/quote/ gives a price that clears)"
                )
            else:
                reason = "lost the round to other bids for the same providers; it stays in the book with priority"
        reason = reason[:1000]
        if reason != job.error and Job.objects.filter(pk=job.pk, state=Job.State.QUEUED).update(error=reason):
            # The buyer's stream hears it too, once per change of reason (not every round).
            event = {"type": "job.bid", "reason": reason}
            transaction.on_commit(functools.partial(_publish, selectors.job_group(job.pk), event))


def _publish(group: str, event: dict[str, Any]) -> None:
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    async_to_sync(get_channel_layer().group_send)(group, event)


def job_bid(job: Job, chain: list[Shard]) -> JobBid:
    """A queued job as the auction sees it: every shard of its model for its prompt plus its token limit."""
    return JobBid(
        job_id=job.pk,
        shards=tuple(ShardDemand(shard_id=s.shard_id, layers=s.n_layers, memory_bytes=s.size_bytes) for s in chain),
        tokens=job.prompt_tokens + job.max_new_tokens,
        max_price=job.max_price,
        priority=job.priority,
    )


def provider_offer(provider: Provider) -> ProviderOffer:
    """A provider's free capacity and the ask the platform sets for it. The memory budget is shared out by slot:
    with k of n slots free, k/n of it (the weights of the shards it holds are not tracked one by one)."""
    free = provider.slots - provider.busy_slots
    memory = provider.memory_bytes * free // provider.slots if provider.memory_bytes else MEMORY_UNKNOWN
    speed = provider.speed_ns_per_layer_token
    assert speed is not None
    return ProviderOffer(
        provider_id=provider.pk,
        slots=free,
        memory_bytes=memory,
        ask=selectors.provider_ask(provider),
        ns_per_layer_token=speed,
    )


def _record(allocation: Allocation, *, expired: int) -> AuctionRound:
    counts = allocation.counts()
    return AuctionRound.objects.create(
        requested=allocation.requested,
        solver=allocation.solver,
        status=allocation.status,
        wall_time_s=round(allocation.wall_time_s, 4),
        welfare=allocation.welfare,
        objective=allocation.objective,
        best_bound=allocation.best_bound,
        optimality_gap=allocation.optimality_gap,
        n_jobs=allocation.n_jobs,
        n_providers=allocation.n_providers,
        n_winners=counts["winners"],
        n_losers=counts["losers"],
        n_placed=0,
        n_expired=expired,
        buyer_payments=allocation.buyer_payments,
        fees=allocation.fees,
        prices=allocation.record()["trades"],
    )


class _SlotTaken(Exception):
    pass


def _place(
    round_: AuctionRound,
    job_id: int,
    trades: tuple[Trade, ...],
    providers: dict[int, Provider],
    shards: dict[str, Shard],
) -> bool:
    """Claim one slot on each of the job's providers and write its assignments, all or nothing."""
    try:
        with transaction.atomic():
            if not Job.objects.filter(pk=job_id, state=Job.State.QUEUED).update(
                state=Job.State.ALLOCATED,
                auction_round=round_,
                error="",  # an earlier round's losing reason
            ):
                return False  # cancelled or expired since the book was read
            rows = []
            for hop, trade in enumerate(trades):
                provider = providers[int(trade.provider_id)]
                claimed = Provider.objects.filter(
                    pk=provider.pk,
                    state=Provider.State.ONLINE,
                    barred=False,  # proven to cheat while the round ran
                    channel_name=provider.channel_name,
                    busy_slots__lt=F("slots"),
                ).update(busy_slots=F("busy_slots") + 1)
                if not claimed:
                    raise _SlotTaken()
                rows.append(
                    Assignment(
                        job_id=job_id,
                        auction_round=round_,
                        hop=hop,
                        shard=shards[trade.shard_id],
                        provider=provider,
                        channel_name=provider.channel_name,
                        work=trade.work,
                        ask=trade.ask,
                        unit_price=trade.unit_price,
                    )
                )
            Assignment.objects.bulk_create(rows)
            return True
    except _SlotTaken:
        return False


def _resume_all(jobs: list[tuple[int, int]]) -> None:
    for job_id, epoch in jobs:
        scheduling.job_resume(job_id, epoch)


def _launch_all(job_ids: list[int]) -> None:
    for job_id in job_ids:
        scheduling.job_launch(job_id)
