"""Providers coming and going: the rows behind the WebSocket connections of provider agents."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest, Least
from django.utils import timezone

from market.models import Provider

RELIABILITY_PENALTY = 100  # permille lost for each dropped step or missed deadline
RELIABILITY_REWARD = 10  # permille regained for each job served to the end


def provider_connect(*, user: User, channel_name: str, capacity: dict[str, Any]) -> Provider:
    """A provider said hello: its row (found by owner and name) is online at this channel with a fresh capacity.

    A new connection holds no sessions, so the busy slots start again from zero.
    """
    with transaction.atomic():
        provider, _ = Provider.objects.select_for_update().get_or_create(user=user, name=capacity["name"])
        for key, value in capacity.items():
            setattr(provider, key, value)
        provider.state = Provider.State.ONLINE
        provider.channel_name = channel_name
        provider.busy_slots = 0
        provider.last_seen = timezone.now()
        provider.save(update_fields=[*capacity, "state", "channel_name", "busy_slots", "last_seen"])
    return provider


def provider_benchmark(*, provider_id: int, channel_name: str, ns_per_layer_token: int) -> None:
    Provider.objects.filter(pk=provider_id, channel_name=channel_name).update(
        ns_per_layer_token=ns_per_layer_token, last_seen=timezone.now()
    )


def provider_heartbeat(*, provider_id: int, channel_name: str) -> None:
    Provider.objects.filter(pk=provider_id, channel_name=channel_name).update(last_seen=timezone.now())


def provider_disconnect(*, provider_id: int, channel_name: str) -> None:
    """Offline, unless the same provider has meanwhile reconnected on another channel (then that one stands)."""
    Provider.objects.filter(pk=provider_id, channel_name=channel_name).update(
        state=Provider.State.OFFLINE, channel_name="", busy_slots=0, last_seen=timezone.now()
    )


def provider_record_failure(*, provider_id: int) -> None:
    """A dropped connection, a missed deadline or a failed step: reliability falls, never below zero."""
    Provider.objects.filter(pk=provider_id).update(
        failures=F("failures") + 1,
        reliability_permille=Greatest(F("reliability_permille") - RELIABILITY_PENALTY, Value(0)),
    )


def provider_record_success(*, provider_id: int, steps: int) -> None:
    Provider.objects.filter(pk=provider_id).update(
        steps_served=F("steps_served") + steps,
        reliability_permille=Least(F("reliability_permille") + RELIABILITY_REWARD, Value(1000)),
    )
