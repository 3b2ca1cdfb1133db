"""The market dashboard (/): the page signed out and signed in, with the ids the browser tests use and the rounds
newest first; /ws/market/ hears a round when `clear_market` runs one, and a provider coming and going, with the
figures of market.overview and nothing private; what a viewer sends changes nothing."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from config.asgi import application
from market import services
from market.models import AuctionRound, Job, LanguageModel, Provider
from verification.models import Dispute
from verification.services import verdicts

IDS = (
    "live-status",
    "providers-online",
    "providers-webgpu",
    "providers-wasm",
    "providers-native",
    "free-slots",
    "book-bids",
    "tokens-per-second",
    "audits",
    "verdicts",
    "rounds",
    "chart-prices",
    "chart-welfare",
    "chart-gap",
)


def round_row(n_jobs: int) -> AuctionRound:
    return AuctionRound.objects.create(
        requested="auto", solver="greedy", status="heuristic", wall_time_s=0.002, welfare=12, objective=12,
        n_jobs=n_jobs, n_providers=1, n_winners=1, n_losers=0, n_placed=1, buyer_payments=10, fees=0,
        prices=[{"job": 1, "shard": "s", "provider": 1, "work": 4, "ask": 1, "unit_price": 3}],
    )  # fmt: skip


def online_provider(owner: User, name: str, backend: str = "cpu", **fields: Any) -> Provider:
    return Provider.objects.create(
        user=owner, name=name, backend=backend, state=Provider.State.ONLINE, channel_name=f"chan.{name}",
        last_seen=timezone.now(), ns_per_layer_token=1_000_000, **fields,
    )  # fmt: skip


def post_bid(buyer: User, model: LanguageModel) -> Job:
    """A bid whose prompt ("hello there") must never reach the dashboard."""
    return services.job_create(
        buyer=buyer, model=model, messages=[{"role": "user", "content": "hello there"}], max_new_tokens=8,
        temperature=Decimal(0), top_p=Decimal(1), seed=None,
    )  # fmt: skip


def element_text(html: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', html)
    assert found is not None, element_id
    return found.group(1)


# --- the page --------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_page_renders_signed_out_with_every_id_and_the_rounds_newest_first() -> None:
    owner = User.objects.create_user("secret-owner")
    online_provider(owner, "secret-host", backend="webgpu", slots=2)
    online_provider(owner, "tab", backend="wasm")
    rounds = [round_row(n) for n in (1, 2, 3)]
    response = Client().get("/")
    assert response.status_code == 200
    html = response.content.decode()
    for element_id in IDS:
        assert f'id="{element_id}"' in html, element_id
    assert '<table id="rounds">' in html
    shown = [int(i) for i in re.findall(r'<tr data-round-id="(\d+)"', html)]
    assert shown == [r.pk for r in reversed(rounds)]
    assert (element_text(html, "providers-online"), element_text(html, "providers-webgpu")) == ("2", "1")
    assert (element_text(html, "providers-wasm"), element_text(html, "providers-native")) == ("1", "0")
    assert element_text(html, "free-slots") == "3"
    # The first paint's data for the script, and the script itself (a module, no inline code).
    script = re.search(r'<script id="market-data" type="application/json">(.*?)</script>', html, re.S)
    assert script is not None
    data = json.loads(script[1])
    assert [r["id"] for r in data["rounds"]] == shown
    assert 'src="/static/market/dashboard.js"' in html
    for secret in ("secret-owner", "secret-host", "chan."):
        assert secret not in html


@pytest.mark.django_db
def test_the_page_renders_signed_in_too() -> None:
    client = Client()
    client.force_login(User.objects.create_user("viewer"))
    html = client.get("/").content.decode()
    for element_id in IDS:
        assert f'id="{element_id}"' in html, element_id
    assert 'id="nav-account"' in html
    assert "No round yet" in html


# --- the live feed ---------------------------------------------------------------------------------------------


async def market_feed() -> WebsocketCommunicator:
    ws = WebsocketCommunicator(application, "/ws/market/", headers=[(b"origin", b"http://127.0.0.1")])
    assert (await ws.connect(timeout=5))[0]
    return ws


def assert_public(message: dict[str, Any]) -> None:
    text = json.dumps(message)
    for private in ("hello there", "alice", "carol", "chan.", '"prices"', '"messages"', '"text"', '"name"'):
        assert private not in text


@pytest.mark.django_db(transaction=True)
def test_a_round_reaches_the_feed_with_its_prices_and_the_fresh_figures(
    model: LanguageModel, alice: User, carol: User, launches: list[int]
) -> None:
    online_provider(carol, "first", slots=1)
    online_provider(carol, "second", backend="wasm", slots=1)
    job = post_bid(alice, model)

    async def scenario() -> None:
        ws = await market_feed()
        try:
            round_ = await sync_to_async(services.clear_market)()
            assert round_ is not None
            message = await ws.receive_json_from(timeout=10)
            assert message["type"] == "round"
            assert message["round"]["id"] == round_.pk
            assert (message["round"]["n_jobs"], message["round"]["n_placed"]) == (1, 1)
            assert message["round"]["price"]["trades"] == 2
            assert message["round"]["price"]["low"] <= message["round"]["price"]["median"]
            assert message["figures"]["book"] == {"bids": 0, "max_price_total": 0}  # placed: out of the book
            assert message["figures"]["providers"]["free_slots"] == 0  # both slots claimed by the round
            assert message["figures"]["providers"]["by_backend"] == {"webgpu": 0, "wasm": 1, "native": 1}
            assert_public(message)
        finally:
            await ws.disconnect()

    async_to_sync(scenario)()
    assert launches == [job.pk]


@pytest.mark.django_db(transaction=True)
def test_providers_coming_and_going_reach_the_feed(carol: User) -> None:
    capacity = {"name": "carol-laptop", "kind": "headless", "backend": "cpu", "slots": 2, "memory_bytes": 0}

    async def scenario() -> None:
        ws = await market_feed()
        try:
            provider = await sync_to_async(services.provider_connect)(
                user=carol, channel_name="chan.carol", capacity=capacity
            )
            came = await ws.receive_json_from(timeout=5)
            assert came["type"] == "figures"
            assert came["figures"]["providers"]["by_backend"]["native"] == 1
            assert came["figures"]["providers"]["free_slots"] == 2
            await sync_to_async(services.provider_disconnect)(provider_id=provider.pk, channel_name="chan.carol")
            went = await ws.receive_json_from(timeout=5)
            assert went["figures"]["providers"]["online"] == 0
            assert_public(came)
        finally:
            await ws.disconnect()

    async_to_sync(scenario)()


@pytest.mark.django_db(transaction=True)
def test_what_a_viewer_sends_is_ignored_and_the_feed_goes_on(carol: User) -> None:
    async def scenario() -> None:
        ws = await market_feed()
        try:
            for junk in ('{"type": "market.message", "text": "forged"}', '{"type": "round"}', "not json", "x" * 10_000):
                await ws.send_to(text_data=junk)
            await ws.send_to(bytes_data=b"\x00\x01")
            # The feed is still open, and what comes next is the server's own event, not anything sent above.
            await sync_to_async(online_provider)(carol, "later")
            await sync_to_async(services.provider_benchmark)(
                provider_id=(await Provider.objects.aget(name="later")).pk,
                channel_name="chan.later",
                ns_per_layer_token=500_000,
                claimed_ns_per_layer_token=500_000,
            )
            message = await ws.receive_json_from(timeout=5)
            assert message["type"] == "figures"
            assert message["figures"]["providers"]["online"] == 1
        finally:
            await ws.disconnect()

    async_to_sync(scenario)()
    assert AuctionRound.objects.count() == 0
    assert Job.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_job_ending_and_a_verdict_reach_the_feed(model: LanguageModel, alice: User) -> None:
    """The figures change between rounds too: a bid that ends leaves the book (its settlement tells the dashboards),
    and a verdict changes the counts of checks."""
    job = post_bid(alice, model)

    async def scenario() -> None:
        ws = await market_feed()
        try:
            await sync_to_async(services.job_cancel)(job=job)
            ended = await ws.receive_json_from(timeout=5)
            assert ended["type"] == "figures" and ended["figures"]["book"]["bids"] == 0
            assert_public(ended)
            dispute = await Dispute.objects.acreate(job=job, kind=Dispute.Kind.AUDIT, state=Dispute.State.NO_FRAUD)
            await sync_to_async(verdicts.publish)(dispute)
            checked = await ws.receive_json_from(timeout=5)
            assert checked["figures"]["verification"]["verified"] == 1
        finally:
            await ws.disconnect()

    async_to_sync(scenario)()
