"""Reads of the market app (the database only: loading stored shard and tokenizer files is market.model_files)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import Case, F, Q, QuerySet, When
from django.urls import reverse
from django.utils import timezone

from config.errors import NotFound
from inference.config import parse_plan
from ledger.chain import selectors as chain_selectors
from ledger.models import PendingRelease
from market.auction.pricing import platform_ask
from market.models import Assignment, AuctionRound, Job, LanguageModel, Provider, Shard


def model_get(*, name: str, quant: str) -> LanguageModel:
    model = LanguageModel.objects.filter(name=name, quant=quant).first()
    if model is None:
        raise NotFound(
            f"model {name} ({quant}) is not imported; run: manage.py import_model {name} --quant {quant}",
            code="unknown_model",
        )
    return model


def model_available(*, name: str, quant: str | None) -> LanguageModel:
    """The newest import of the model a buyer names (of that quant when given); NotFound points to /api/models/."""
    models = LanguageModel.objects.filter(name=name)
    if quant is not None:
        models = models.filter(quant=quant)
    model = models.order_by("-pk").first()
    if model is None:
        raise NotFound(
            f"model {name}{f' ({quant})' if quant else ''} is not available; see /api/models/", code="unknown_model"
        )
    return model


def models_listed() -> QuerySet[LanguageModel]:
    """Every imported model with its shards prefetched, by name then quant."""
    return LanguageModel.objects.prefetch_related("shards").order_by("name", "quant")


def shard_chain(*, model: LanguageModel, plan: str | None) -> list[Shard]:
    """The registered shards that run the model front to back.

    With a plan ("0-10,10-20,20-30", "whole", "each") exactly those shards; with none, the longest registered
    shard that is not the whole model at each step, so `--shards` alone runs a real chain.
    """
    n_layers = int(model.config["n_layers"])
    by_range = {(s.first_layer, s.end_layer): s for s in model.shards.all()}
    if plan is not None:
        ranges = parse_plan(plan, n_layers=n_layers)
        missing = [f"{a}-{b}" for a, b in ranges if (a, b) not in by_range]
        if missing:
            raise NotFound(
                f"{model} has no shard {', '.join(missing)}; import it with --plan {plan}", code="shard_unavailable"
            )
        return [by_range[r] for r in ranges]
    chain, layer = [], 0
    while layer < n_layers:
        candidates = [s for (a, b), s in by_range.items() if a == layer and (a, b) != (0, n_layers)]
        if not candidates:
            raise NotFound(f"{model} has no shard starting at layer {layer}", code="shard_unavailable")
        best = max(candidates, key=lambda s: s.end_layer)
        chain.append(best)
        layer = best.end_layer
    return chain


def providers_online() -> QuerySet[Provider]:
    """Providers connected now: online, and heard from within three heartbeats (a server that died cannot mark
    its providers offline, so an old `online` alone proves nothing). A provider proven to cheat is never one."""
    fresh = timezone.now() - timedelta(seconds=3 * settings.PROVIDER_HEARTBEAT_SECONDS)
    online = Provider.objects.filter(state=Provider.State.ONLINE, last_seen__gte=fresh, barred=False)
    return online.exclude(channel_name="")


def providers_online_by_benchmark() -> QuerySet[Provider]:
    """Providers online now, fastest benchmark first (not yet benchmarked last), then by pk."""
    return providers_online().order_by(F("ns_per_layer_token").asc(nulls_last=True), "pk")


def providers_of_user(*, user: User) -> QuerySet[Provider]:
    """The user's provider agents, online or not, oldest first."""
    return Provider.objects.filter(user=user).order_by("pk")


def providers_free(
    *, exclude: set[int], heard_since: datetime | None = None, holding: Mapping[tuple[int, str], int] | None = None
) -> list[Provider]:
    """Online providers with a free slot whose owner's stake may take work (ledger.chain: with a chain, a fresh read
    at or above the minimum), fastest first (by the speed the market prices by; not yet benchmarked last), then most
    reliable. `heard_since`: only those heard from since then (after a server died: those connected to live ones).
    `holding`: slots to count as free, by (provider, connection) (a lost runner's, about to be freed)."""
    online = providers_online() if heard_since is None else providers_online().filter(last_seen__gt=heard_since)
    online = online.filter(chain_selectors.staked_users_q()).exclude(pk__in=exclude)
    if not holding:
        online = online.filter(busy_slots__lt=F("slots"))
    ordered = online.annotate(speed=speed_expression()).order_by(
        F("speed").asc(nulls_last=True), "-reliability_permille", "pk"
    )
    if not holding:
        return list[Provider](ordered)
    free: list[Provider] = []
    for provider in ordered:
        provider.busy_slots -= holding.get((provider.pk, provider.channel_name), 0)
        if provider.busy_slots < provider.slots:
            free.append(provider)
    return free


def observed_spread(provider: Provider) -> dict[str, int] | None:
    """The 10th and 90th percentile of the provider's latest jobs' observed speeds (their medians), and how many."""
    values = sorted(int(value) for value, _ in provider.observed_jobs)
    if not values:
        return None

    def at(q: float) -> int:
        return values[min(len(values) - 1, int(q * len(values)))]

    return {"jobs": len(values), "low": at(0.1), "high": at(0.9)}


def speed_expression() -> Case:
    """Provider.speed_ns_per_layer_token in SQL: observed once there are enough samples, else the benchmark."""
    enough = Q(observed_ns_per_layer_token__isnull=False, observed_steps__gte=settings.SPEED_MIN_SAMPLES)
    return Case(When(enough, then=F("observed_ns_per_layer_token")), default=F("ns_per_layer_token"))


def shard_descriptor(shard: Shard) -> dict[str, Any]:
    """What a provider needs to fetch, check and run a shard (the `shard` object of the protocol)."""
    config = shard.model.config
    return {
        "id": shard.shard_id,
        "sha256": shard.sha256,
        "url": reverse("shard-download", kwargs={"sha256": shard.sha256}),
        "size": shard.size_bytes,
        "first_layer": shard.first_layer,
        "end_layer": shard.end_layer,
        "has_embedding": shard.first_layer == 0,
        "has_head": shard.end_layer == int(config["n_layers"]),
        "hidden": int(config["hidden"]),
        "vocab": int(config["vocab"]),
    }


def benchmark_shard() -> Shard | None:
    """The real workload providers time themselves on: the shortest middle shard (hidden in, hidden out) of the
    newest model, or the shortest shard when a model has no middle one."""
    model = LanguageModel.objects.order_by("-pk").first()
    if model is None:
        return None
    n_layers = int(model.config["n_layers"])
    shards = sorted(model.shards.all(), key=lambda s: (s.first_layer == 0 or s.end_layer == n_layers, s.n_layers))
    return shards[0] if shards else None


def book_empty() -> bool:
    """No bid waits in the book (no queued job)."""
    return not Job.objects.filter(state=Job.State.QUEUED).exists()


def job_group(job_id: int) -> str:
    """The channel-layer group that carries a job's stream to its buyer's /ws/jobs/<id>/ connections."""
    return f"job-{job_id}"


def job_done_event(job: Job) -> dict[str, Any]:
    """The last event of a job's stream, from the finished (or cancelled) row."""
    return {
        "type": "job.done",
        "state": job.state,
        "text": job.text,
        "tokens": len(job.tokens),
        "finish_reason": job.finish_reason,
        "error_code": job.error_code,
        "error": job.error,
    }


def job_for_buyer(*, buyer: User, job_id: int) -> Job:
    """A buyer's own job; anyone else's is NotFound, exactly like one that does not exist."""
    job = Job.objects.select_related("model").filter(pk=job_id, buyer=buyer).first()
    if job is None:
        raise NotFound(f"job {job_id} not found", code="job_not_found")
    return job


def jobs_of_buyer(
    *,
    buyer: User,
    state: str | None = None,
    model: str | None = None,
    since: datetime | None = None,
    before: datetime | None = None,
    limit: int = 100,
) -> QuerySet[Job]:
    """The buyer's latest jobs (at most `limit`), newest first; nobody else's. Optionally only those in one state,
    of one model (by name, any quant), or created in [since, before)."""
    jobs = Job.objects.filter(buyer=buyer).select_related("model")
    if state is not None:
        jobs = jobs.filter(state=state)
    if model is not None:
        jobs = jobs.filter(model__name=model)
    if since is not None:
        jobs = jobs.filter(created_at__gte=since)
    if before is not None:
        jobs = jobs.filter(created_at__lt=before)
    return jobs.order_by("-pk")[:limit]


def session_is_live(*, session: uuid.UUID) -> bool:
    """Whether a running job uses this session id (on whichever provider): the runner records it in the pipeline."""
    return Job.objects.filter(state=Job.State.RUNNING, pipeline__icontains=str(session)).exists()


def first_hop_channel(job_id: int) -> str | None:
    """The connection whose slot the job's latest round claimed for its first hop (None when it has no placement)."""
    return (
        Assignment.objects.filter(
            job_id=job_id, hop=0, auction_round_id=Job.objects.filter(pk=job_id).values("auction_round_id")[:1]
        )
        .values_list("channel_name", flat=True)
        .first()
    )


def job_held(*, job_id: int, epoch: int) -> bool:
    """Whether the runner with this epoch still holds the job (no other runner took it over)."""
    return Job.objects.filter(pk=job_id, runner_epoch=epoch).exists()


def job_ref(job_id: int) -> str:
    """The job's reference in the ledger (escrow, refund and settlement entries carry it)."""
    return f"job-{job_id}"


def provider_ask(provider: Provider) -> int:
    """The provider's ask in base units per layer-token (docs/pricing.md): its own posted ask, never below the
    platform's figure from its speed and reliability (which is the ask when it posts none). A provider not
    benchmarked yet has none (the book leaves it out)."""
    return max(platform_floor(provider), provider.posted_ask or 0)


def platform_floor(provider: Provider) -> int:
    """The platform's figure for the provider: its speed priced at ASK_PER_COMPUTE_SECOND over its reliability."""
    speed = provider.speed_ns_per_layer_token
    assert speed is not None
    return platform_ask(
        ns_per_layer_token=speed,
        reliability_permille=provider.reliability_permille,
        per_compute_second=settings.ASK_PER_COMPUTE_SECOND,
        floor_permille=settings.ASK_RELIABILITY_FLOOR_PERMILLE,
    )


def default_max_price(*, model: LanguageModel, prompt_tokens: int, max_new_tokens: int) -> int:
    """What a bid offers when the buyer names no price: DEFAULT_BID_PER_LAYER_TOKEN for every layer-token of the
    job run to its token limit."""
    layers = int(model.config["n_layers"])
    return settings.DEFAULT_BID_PER_LAYER_TOKEN * layers * (prompt_tokens + max_new_tokens)


def auction_rounds_latest(*, limit: int = 50) -> QuerySet[AuctionRound]:
    """The latest auction rounds, newest first."""
    return AuctionRound.objects.order_by("-pk")[:limit]


def provider_releases(*, provider: User, limit: int = 100) -> QuerySet[PendingRelease]:
    """The provider's latest settlement payouts (pending inside the challenge window, or released), newest first."""
    return PendingRelease.objects.filter(provider=provider).order_by("-pk")[:limit]


def provider_earnings_series(*, provider: User, days: int = 30) -> list[dict[str, int]]:
    """What the provider earned per UTC day of settlement (pending and released alike), for each of the last `days`
    days up to today, oldest first, a day without a settlement at 0: [{"day": Unix seconds of the day's start,
    "amount": base units}]."""
    now = timezone.now()
    today = int(now.timestamp()) // 86400 * 86400
    first = today - (days - 1) * 86400
    since = now - timedelta(seconds=now.timestamp() - first)  # the first day's start (UTC)
    rows = PendingRelease.objects.filter(provider=provider, settlement__created_at__gte=since)
    per_day = dict.fromkeys(range(first, today + 1, 86400), 0)
    for settled_at, amount in rows.values_list("settlement__created_at", "amount"):
        day = int(settled_at.timestamp()) // 86400 * 86400
        per_day[day] = per_day.get(day, 0) + amount
    return [{"day": day, "amount": amount} for day, amount in sorted(per_day.items())]
