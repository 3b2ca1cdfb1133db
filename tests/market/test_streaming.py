"""The token stream of a running job, against the real job consumer, channel layer and database: the buyer gets
every token once and in order whenever they join, the first token goes out at once, and tokens that arrive within
STREAM_STORE_EVERY_MS share one write and one event."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User

from config.asgi import application
from market import selectors
from market.models import Job, LanguageModel
from market.streaming import TokenStream

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def running_job(model: LanguageModel) -> tuple[Job, str]:
    from rest_framework.authtoken.models import Token

    buyer = User.objects.create_user("streaming-buyer")
    job = Job.objects.create(buyer=buyer, model=model, messages=[{"role": "user", "content": "hi"}], state="running")
    return job, Token.objects.create(user=buyer).key


def decode(ids: list[int]) -> str:
    return "".join(f"<{i}>" for i in ids)


async def buyer_stream(job: Job, token: str) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://127.0.0.1"), (b"authorization", f"Token {token}".encode())]
    ws = WebsocketCommunicator(application, f"/ws/jobs/{job.pk}/", headers=headers)
    assert (await ws.connect(timeout=5))[0]
    return ws


async def tokens_until(ws: WebsocketCommunicator, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    received = 0
    while received < count:
        event = await ws.receive_json_from(timeout=5)
        events.append(event)
        received += len(event["tokens"]) if event["type"] == "snapshot" else 1
    return events


def ids_of(events: list[dict[str, Any]]) -> list[int]:
    ids: list[int] = []
    for event in events:
        ids += event["tokens"] if event["type"] == "snapshot" else [event["token"]]
    return ids


def test_every_token_once_in_order_with_a_buyer_joining_mid_stream(running_job: tuple[Job, str], settings: Any) -> None:
    settings.STREAM_STORE_EVERY_MS = 50

    async def scenario() -> None:
        job, key = running_job
        early = await buyer_stream(job, key)
        assert (await early.receive_json_from(timeout=5))["type"] == "snapshot"
        stream = TokenStream(job_id=job.pk, layer=get_channel_layer(), decode=decode)
        stream.start()
        late = None
        try:
            for token in range(40):
                stream.add(token)
                if token == 17:
                    late = await buyer_stream(job, key)  # joins while tokens are being stored and published
                # Not a wait on anything: the behaviour under test is tokens arriving over several store intervals,
                # as a decoder produces them; any pacing must give every buyer every token once, in order.
                await asyncio.sleep(0.004)
        finally:
            await stream.flush()
        assert late is not None
        early_events = await tokens_until(early, 40)
        late_events = await tokens_until(late, 40)
        assert ids_of(early_events) == list(range(40))
        assert ids_of(late_events) == list(range(40))
        assert late_events[0]["type"] == "snapshot"
        indexes = [e["index"] for e in late_events if e["type"] == "token"]
        assert indexes == list(range(len(late_events[0]["tokens"]), 40))
        stored = await sync_to_async(Job.objects.get)(pk=job.pk)
        assert stored.tokens == list(range(40)) and stored.text == decode(list(range(40)))
        for ws in (early, late):
            await ws.disconnect()

    async_to_sync(scenario)()


def test_first_token_at_once_then_one_write_per_interval(running_job: tuple[Job, str], settings: Any) -> None:
    settings.STREAM_STORE_EVERY_MS = 300

    async def scenario() -> None:
        job, _ = running_job
        layer = get_channel_layer()
        listener = await layer.new_channel()
        await layer.group_add(selectors.job_group(job.pk), listener)
        stream = TokenStream(job_id=job.pk, layer=layer, decode=decode)
        stream.start()
        try:
            started = time.monotonic()
            stream.add(7)
            first = await asyncio.wait_for(layer.receive(listener), 2)
            first_after = time.monotonic() - started
            for token in range(8, 20):  # all within one interval: one write, one event
                stream.add(token)
            second = await asyncio.wait_for(layer.receive(listener), 2)
            second_after = time.monotonic() - started
        finally:
            await stream.flush()  # a failed check must not leave the writer running when the loop closes
        assert first["pieces"] == [[0, 7, "<7>"]]
        assert first_after < 0.2  # not held back for the interval
        assert second_after >= 0.25
        assert [p[0] for p in second["pieces"]] == list(range(1, 13))
        assert [p[1] for p in second["pieces"]] == list(range(8, 20))
        stored = await sync_to_async(Job.objects.get)(pk=job.pk)
        assert stored.tokens == [7, *range(8, 20)]

    async_to_sync(scenario)()


def test_flush_does_not_wait_out_the_interval(running_job: tuple[Job, str], settings: Any) -> None:
    settings.STREAM_STORE_EVERY_MS = 5000

    async def scenario() -> None:
        job, _ = running_job
        layer = get_channel_layer()
        listener = await layer.new_channel()
        await layer.group_add(selectors.job_group(job.pk), listener)
        stream = TokenStream(job_id=job.pk, layer=layer, decode=decode)
        stream.start()
        stream.add(1)
        first = await asyncio.wait_for(layer.receive(listener), 5)  # written and published: the interval starts
        assert first["pieces"] == [[0, 1, "<1>"]]
        stream.add(2)
        started = time.monotonic()
        await stream.flush()
        assert time.monotonic() - started < 2
        stored = await sync_to_async(Job.objects.get)(pk=job.pk)
        assert stored.tokens == [1, 2]

    async_to_sync(scenario)()


def test_an_open_bids_stream_says_why_a_round_did_not_place_it(model: LanguageModel, monkeypatch: Any) -> None:
    from rest_framework.authtoken.models import Token

    from market import services

    monkeypatch.setattr("market.scheduling.job_launch", lambda job_id: None)
    monkeypatch.setattr("market.scheduling.auction_nudge", lambda: None)
    buyer, _ = services.account_open(username="bidder")
    token = Token.objects.get(user=buyer).key
    job = services.job_create(
        buyer=buyer, model=model, messages=[{"role": "user", "content": "hi"}], max_new_tokens=4,
        temperature=Decimal(0), top_p=Decimal(1), seed=None, max_price=1,
    )  # fmt: skip

    async def scenario() -> None:
        ws = await buyer_stream(job, token)
        snapshot = await ws.receive_json_from(timeout=5)
        assert (snapshot["type"], snapshot["state"], snapshot["reason"]) == ("snapshot", "queued", "")
        await sync_to_async(services.clear_market)()  # nobody to serve it: it loses, and the stream hears why
        event = await ws.receive_json_from(timeout=5)
        assert event["type"] == "bid" and "no provider free now can serve shard" in event["reason"]
        await sync_to_async(services.clear_market)()  # the same reason again: no second event
        assert await ws.receive_nothing(timeout=0.5)
        await ws.disconnect()
        ws = await buyer_stream(job, token)  # a buyer who joins later reads it in the snapshot
        assert "no provider free now" in (await ws.receive_json_from(timeout=5))["reason"]
        await ws.disconnect()

    async_to_sync(scenario)()
