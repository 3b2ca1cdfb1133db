"""The market's public overview (market/overview.py) against rows made here: providers online by backend (offline,
stale, barred and disconnected ones left out), free slots, the book, rounds with their price spread, tokens per
second from finished jobs, audits and verdicts; GET /api/market/ serves the same to anyone; nothing private leaks."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.test import APIClient

from market import overview
from market.models import AuctionRound, Job, LanguageModel, Provider
from verification.models import Dispute

pytestmark = pytest.mark.django_db

SECRETS = ("secret-buyer-name", "secret prompt words", "secret answer words", "secret-host", "chan.secret")


@pytest.fixture
def owner() -> User:
    return User.objects.create_user("secret-buyer-name")


@pytest.fixture
def lm() -> LanguageModel:
    """A model row (no files: the overview reads only jobs' figures)."""
    return LanguageModel.objects.create(
        name="tiny", source_sha256="0" * 64, config={"n_layers": 4}, tokenizer_file="t.json", tokenizer_sha256="0" * 64
    )


def provider(owner: User, name: str, backend: str, *, slots: int = 1, busy: int = 0, **fields: Any) -> Provider:
    online = {"state": Provider.State.ONLINE, "channel_name": f"chan.secret.{name}", "last_seen": timezone.now()}
    return Provider.objects.create(
        user=owner, name=name, backend=backend, slots=slots, busy_slots=busy, **{**online, **fields}
    )


def job(owner: User, lm: LanguageModel, state: str = Job.State.QUEUED, **fields: Any) -> Job:
    prompt = [{"role": "user", "content": "secret prompt words"}]
    return Job.objects.create(buyer=owner, model=lm, messages=prompt, state=state, text="secret answer words", **fields)


def trade(unit_price: int, work: int) -> dict[str, Any]:
    payment = unit_price * work
    return {"job": 1, "shard": "tiny:f32:0-2", "provider": 1, "work": work, "ask": 1, "unit_price": unit_price,
            "payment": payment, "fee": 0, "provider_receipt": payment}  # fmt: skip


def auction_round(*, trades: list[dict[str, Any]], welfare: int = 100, gap: float | None = 0.0) -> AuctionRound:
    return AuctionRound.objects.create(
        requested="auto", solver="cpsat", status="optimal", wall_time_s=0.01, welfare=welfare, objective=welfare,
        optimality_gap=gap, n_jobs=2, n_providers=3, n_winners=1, n_losers=1, n_placed=1, buyer_payments=10, fees=1,
        prices=trades,
    )  # fmt: skip


@pytest.fixture
def market(owner: User, lm: LanguageModel) -> dict[str, Any]:
    """A market with something of everything, and what the overview must count of it."""
    provider(owner, "secret-host", "webgpu", slots=2, busy=1)
    provider(owner, "gpu-2", "webgpu", slots=1, busy=1)
    provider(owner, "tab", "wasm", slots=3)
    provider(owner, "native", "cpu", slots=4, busy=1)
    provider(owner, "gone", "cpu", state=Provider.State.OFFLINE, channel_name="")
    provider(owner, "stale", "cpu", last_seen=timezone.now() - timedelta(hours=1))
    provider(owner, "cheat", "wasm", barred=True)
    job(owner, lm, max_price=1_000)
    job(owner, lm, max_price=2_500)
    job(owner, lm, Job.State.RUNNING, tokens=[1] * 50, max_price=9_999)  # running: neither in the book nor served
    now = timezone.now()
    done = job(owner, lm, Job.State.DONE, tokens=[5] * 120, finished_at=now - timedelta(seconds=30))
    failed = job(owner, lm, Job.State.FAILED, tokens=[5] * 30, finished_at=now - timedelta(seconds=200))
    old = job(owner, lm, Job.State.DONE, tokens=[5] * 900, finished_at=now - timedelta(minutes=10))  # outside
    Dispute.objects.create(job=done, kind=Dispute.Kind.AUDIT, state=Dispute.State.NO_FRAUD)
    Dispute.objects.create(job=failed, kind=Dispute.Kind.AUDIT, state=Dispute.State.FRAUD)
    Dispute.objects.create(job=old, kind=Dispute.Kind.AUDIT, state=Dispute.State.OPEN)
    Dispute.objects.create(job=done, kind=Dispute.Kind.CHALLENGE, state=Dispute.State.REVEALING, challenger=owner)
    Dispute.objects.create(job=old, kind=Dispute.Kind.CHALLENGE, state=Dispute.State.NO_FRAUD, challenger=owner)
    first = auction_round(trades=[trade(3, 10), trade(7, 30), trade(5, 20)], welfare=40, gap=0.0)
    empty = auction_round(trades=[], welfare=0, gap=None)
    last = auction_round(trades=[trade(2, 10), trade(8, 10)], welfare=90, gap=0.01234)
    return {"rounds": [last, empty, first]}


def test_providers_online_by_backend_leave_out_offline_stale_and_barred(market: dict[str, Any]) -> None:
    providers = overview.providers_summary()
    assert providers["by_backend"] == {"webgpu": 2, "wasm": 1, "native": 1}
    assert providers["online"] == 4
    assert providers["slots"] == 2 + 1 + 3 + 4
    assert providers["free_slots"] == 1 + 0 + 3 + 3


def test_the_book_counts_open_bids_and_their_maximum_prices(market: dict[str, Any]) -> None:
    assert overview.book_summary() == {"bids": 2, "max_price_total": 3_500}


def test_tokens_per_second_are_the_tokens_of_jobs_finished_in_the_window_over_it(market: dict[str, Any]) -> None:
    served = overview.tokens_served()
    assert served == {"window_seconds": 300, "jobs": 2, "tokens": 150, "per_second": 0.5}
    assert overview.tokens_served(window_seconds=3600)["tokens"] == 1_050


def test_audits_and_challenges_by_verdict(market: dict[str, Any]) -> None:
    v = overview.verification_summary()
    assert v["audits"] == {"total": 3, "open": 1, "verified": 1, "fraud": 1}
    assert v["challenges"] == {"total": 2, "open": 1, "verified": 1, "fraud": 0}
    assert (v["total"], v["open"], v["verified"], v["fraud"], v["verdicts"]) == (5, 2, 2, 1, 3)


def test_rounds_newest_first_with_their_price_spread_welfare_and_gap(market: dict[str, Any]) -> None:
    rounds = overview.market_overview()["rounds"]
    assert [r["id"] for r in rounds] == [r.pk for r in market["rounds"]]
    last, empty, first = rounds
    # Prices 3, 7, 5 on work 10, 30, 20: median 5, range 3-7, a layer-token cost (30 + 210 + 100) / 60 on average.
    assert first["price"] == {"trades": 3, "median": 5, "low": 3, "high": 7, "average": 5}
    assert last["price"] == {"trades": 2, "median": 2, "low": 2, "high": 8, "average": 5}  # the lower median
    assert empty["price"] == {"trades": 0, "median": None, "low": None, "high": None, "average": None}
    assert (first["welfare"], first["gap_percent"], empty["gap_percent"], last["gap_percent"]) == (40, 0.0, None, 1.23)
    assert all("prices" not in r for r in rounds)  # no per-job trade


def test_an_empty_market_reads_as_zeros() -> None:
    figures = overview.market_overview()
    assert figures["providers"] == {
        "online": 0,
        "by_backend": {"webgpu": 0, "wasm": 0, "native": 0},
        "slots": 0,
        "free_slots": 0,
    }
    assert figures["book"] == {"bids": 0, "max_price_total": 0}
    assert figures["tokens"]["per_second"] == 0
    assert figures["verification"]["verdicts"] == 0
    assert figures["rounds"] == []


def test_the_api_serves_the_overview_to_anyone(market: dict[str, Any], owner: User) -> None:
    anonymous = APIClient().get("/api/market/")
    assert anonymous.status_code == 200
    body = anonymous.json()
    expected = json.loads(json.dumps(overview.market_overview(), default=str))
    assert {k: v for k, v in body.items() if k != "at"} == {k: v for k, v in expected.items() if k != "at"}
    signed_in = APIClient()
    signed_in.force_authenticate(owner)
    assert signed_in.get("/api/market/").json()["book"] == {"bids": 2, "max_price_total": 3_500}


def test_the_api_changes_nothing(market: dict[str, Any]) -> None:
    response = APIClient().post("/api/market/", {"clear": True}, format="json")
    assert response.status_code in (401, 403, 405)
    assert AuctionRound.objects.count() == 3


def test_nothing_private_in_the_overview_or_its_events(market: dict[str, Any]) -> None:
    texts = [
        json.dumps(overview.market_overview(), default=str),
        APIClient().get("/api/market/").content.decode(),
        overview.round_event(market["rounds"][0].pk)["text"],
        overview.overview_event()["text"],
    ]
    for text in texts:
        for secret in SECRETS:
            assert secret not in text
        for field in ('"messages"', '"text"', '"username"', '"name"', '"channel_name"', '"prices"', '"buyer"'):
            assert field not in text


def test_anonymous_readers_of_the_api_are_limited_per_address(settings: Any) -> None:
    """Public, but not free to hammer: the anonymous rate applies (the page's script fetches only after a drop)."""
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "anon": "3/minute"}
    client = APIClient()
    assert [client.get("/api/market/").status_code for _ in range(3)] == [200] * 3
    assert client.get("/api/market/").status_code == 429
