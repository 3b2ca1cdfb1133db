"""Providers coming and going: the rows behind the WebSocket connections of provider agents."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest, Least
from django.utils import timezone

from config.errors import InvalidInput, NotFound
from market import overview
from market.models import Provider

RELIABILITY_PENALTY = 100  # permille lost for each dropped step or missed deadline
RELIABILITY_REWARD = 10  # permille regained for each job served to the end


def provider_connect(*, user: User, channel_name: str, capacity: dict[str, Any]) -> Provider:
    """A provider said hello: its row (found by owner and name) is online at this channel with a fresh capacity.

    A new connection holds no sessions, so the busy slots start again from zero, and it is unbenchmarked until it
    answers this connection's own challenge (worker_web/benchmark.py): a speed measured on an earlier connection, maybe
    of another machine under the same name, does not carry over.
    """
    with transaction.atomic():
        provider, _ = Provider.objects.select_for_update().get_or_create(user=user, name=capacity["name"])
        for key, value in capacity.items():
            setattr(provider, key, value)
        provider.state = Provider.State.ONLINE
        provider.channel_name = channel_name
        provider.busy_slots = 0
        provider.ns_per_layer_token = None
        provider.last_seen = timezone.now()
        provider.save(
            update_fields=[*capacity, "state", "channel_name", "busy_slots", "ns_per_layer_token", "last_seen"]
        )
    _figures_changed()
    return provider


def provider_post_ask(*, user: User, provider_id: int, ask: object) -> Provider:
    """Set one of the user's providers' own ask (base units per layer-token; None: the platform's figure). The next
    round uses it, never below the platform's figure. Another user's provider is NotFound, like a missing one."""
    if ask is not None and (isinstance(ask, bool) or not isinstance(ask, int) or not 1 <= ask <= 10**9):
        raise InvalidInput("ask must be a whole number of base units per layer-token from 1 to 10^9, or null")
    if not Provider.objects.filter(pk=provider_id, user=user).update(posted_ask=ask):
        raise NotFound(f"provider {provider_id} not found", code="provider_not_found")
    return Provider.objects.get(pk=provider_id)


def provider_benchmark(
    *, provider_id: int, channel_name: str, ns_per_layer_token: int, claimed_ns_per_layer_token: int
) -> None:
    """A benchmark passed (its answer checked): the speed the server timed prices and places the provider from now
    on; what the provider timed itself is kept beside it, for show."""
    if Provider.objects.filter(pk=provider_id, channel_name=channel_name).update(
        ns_per_layer_token=ns_per_layer_token,
        claimed_ns_per_layer_token=claimed_ns_per_layer_token,
        last_seen=timezone.now(),
    ):
        _figures_changed()


def provider_benchmark_fail(*, provider_id: int, channel_name: str) -> None:
    """A benchmark failed (a wrong, late or unasked answer): unbenchmarked, so no round or quote places it, and its
    reliability falls as for a failed step. Only while this connection is the provider's: a newer one stands."""
    Provider.objects.filter(pk=provider_id, channel_name=channel_name).update(
        ns_per_layer_token=None,
        failures=F("failures") + 1,
        reliability_permille=Greatest(F("reliability_permille") - RELIABILITY_PENALTY, Value(0)),
    )


def provider_heartbeat(*, provider_id: int, channel_name: str) -> None:
    Provider.objects.filter(pk=provider_id, channel_name=channel_name).update(last_seen=timezone.now())


def provider_disconnect(*, provider_id: int, channel_name: str) -> None:
    """Offline, unless the same provider has meanwhile reconnected on another channel (then that one stands)."""
    if Provider.objects.filter(pk=provider_id, channel_name=channel_name).update(
        state=Provider.State.OFFLINE, channel_name="", busy_slots=0, last_seen=timezone.now()
    ):
        _figures_changed()


def _figures_changed() -> None:
    """The dashboards' figures changed (a provider came, went or was benchmarked): they hear it after commit."""
    transaction.on_commit(overview.publish_figures, robust=True)


def provider_record_failure(*, provider_id: int) -> None:
    """A dropped connection, a missed deadline or a failed step: reliability falls, never below zero."""
    Provider.objects.filter(pk=provider_id).update(
        failures=F("failures") + 1,
        reliability_permille=Greatest(F("reliability_permille") - RELIABILITY_PENALTY, Value(0)),
    )


def provider_record_speed(*, provider_id: int, ns_per_layer_token: int, steps: int) -> None:
    """Add one job's observed decode speed (the median of its steps on this provider, after the warm-up) to the
    provider's latest SPEED_HISTORY_JOBS jobs; its observed speed is their median weighted by steps, so one job slowed
    by something else (a busy machine, a slow neighbour) moves it little, and a provider that slows down for good is
    seen within a few jobs. Flag it when the observation is SPEED_FLAG_RATIO times slower than its benchmark."""
    if steps < 1 or ns_per_layer_token < 1:
        return
    with transaction.atomic():
        provider = Provider.objects.select_for_update().get(pk=provider_id)
        history = [*provider.observed_jobs, [ns_per_layer_token, steps]][-settings.SPEED_HISTORY_JOBS :]
        observed = weighted_median(history)
        benchmark = provider.ns_per_layer_token or 0
        flagged = benchmark > 0 and observed > settings.SPEED_FLAG_RATIO * benchmark
        Provider.objects.filter(pk=provider_id).update(
            observed_ns_per_layer_token=observed,
            observed_steps=F("observed_steps") + steps,
            observed_jobs=history,
            speed_flagged=flagged,
        )


def weighted_median(observations: list[list[int]]) -> int:
    """The median of [value, weight] pairs: the smallest value with at least half the total weight at or below it."""
    ordered = sorted(observations)
    half = sum(weight for _, weight in ordered) / 2
    seen = 0
    for value, weight in ordered:
        seen += weight
        if seen >= half:
            return int(value)
    return int(ordered[-1][0])


def provider_record_success(*, provider_id: int, steps: int) -> None:
    Provider.objects.filter(pk=provider_id).update(
        steps_served=F("steps_served") + steps,
        reliability_permille=Least(F("reliability_permille") + RELIABILITY_REWARD, Value(1000)),
    )
