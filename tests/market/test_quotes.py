"""Quotes: the price at which a bid clears now (GET /api/quote/), the bid without a price that offers it, and the
reason a losing bid is given."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from market import quotes, selectors, services
from market.models import Job, LanguageModel, Provider
from tests.market.test_clearing import bid, provider

pytestmark = pytest.mark.django_db


def quote_api(user: User, **params: Any) -> Any:
    client = APIClient()
    client.force_authenticate(user)
    return client.get("/api/quote/", params)


def test_the_quote_is_the_cheapest_pipeline_of_distinct_providers(
    model: LanguageModel, alice: User, carol: User
) -> None:
    cheap = provider(carol, "cheap", ns=200_000)
    mid = provider(carol, "mid", ns=400_000)
    provider(carol, "dear", ns=3_000_000)
    provider(carol, "gone", ns=100, state=Provider.State.OFFLINE)  # fastest, but not online: never quoted
    quote = quotes.cheapest_pipeline(model=model)
    assert sorted(line.provider for line in quote.lines) == sorted([cheap.pk, mid.pk])  # one provider per shard
    asks = sum(selectors.provider_ask(p) * 2 for p in (cheap, mid))  # two layers per shard
    assert quote.per_token == asks
    body = quote_api(alice, model="tiny", prompt_tokens=10, max_new_tokens=6).json()
    assert (body["price"], body["tokens"]) == (asks * 16, 16)
    assert body["bid"] == asks * 16 * (10_000 + settings.QUOTE_MARGIN_BPS) // 10_000
    assert body["ms_per_token"] == pytest.approx((200_000 + 400_000) * 2 / 1e6)


def test_a_bid_without_a_price_offers_the_quote_and_clears_in_one_round(
    model: LanguageModel, alice: User, carol: User, launches: list[int]
) -> None:
    # Slow providers: their asks are far above DEFAULT_BID_PER_LAYER_TOKEN, so a constant default bid would lose.
    provider(carol, "slow-1", ns=20_000_000), provider(carol, "slow-2", ns=25_000_000)
    assert min(selectors.provider_ask(p) for p in Provider.objects.all()) > settings.DEFAULT_BID_PER_LAYER_TOKEN
    job = bid(alice, model)
    assert job.max_price == quotes.cheapest_pipeline(model=model).bid(job.prompt_tokens + job.max_new_tokens)
    services.clear_market()
    assert Job.objects.get(pk=job.pk).state == Job.State.ALLOCATED  # placed by the first round


def test_with_nobody_to_serve_the_quote_is_409_and_a_bid_falls_back_to_the_default_price(
    model: LanguageModel, alice: User
) -> None:
    response = quote_api(alice, model="tiny", prompt_tokens=10)
    assert (response.status_code, response.json()["code"]) == (409, "no_capacity")
    assert "no provider free now can serve shard tiny:f32:0-2" in response.json()["message"]
    job = bid(alice, model)
    assert job.max_price == selectors.default_max_price(
        model=model, prompt_tokens=job.prompt_tokens, max_new_tokens=job.max_new_tokens
    )


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"model": "nope", "prompt_tokens": 3}, "unknown_model"),
        ({"model": "tiny", "prompt_tokens": "x"}, "invalid_input"),
        ({"model": "tiny", "prompt_tokens": 3, "max_new_tokens": 0}, "invalid_input"),
    ],
)
def test_bad_quote_requests_get_a_clear_error(
    model: LanguageModel, alice: User, params: dict[str, Any], code: str
) -> None:
    response = quote_api(alice, **params)
    assert 400 <= response.status_code < 500 and response.json()["code"] == code


def test_a_losing_bid_is_told_why(model: LanguageModel, alice: User, carol: User, launches: list[int]) -> None:
    too_low = bid(alice, model, max_price=1)
    services.clear_market()
    assert "no provider free now can serve shard" in Job.objects.get(pk=too_low.pk).error
    provider(carol, "a"), provider(carol, "b")
    services.clear_market()
    error = Job.objects.get(pk=too_low.pk).error
    assert "the cheapest pipeline free now asks" in error and "more than its maximum of 1" in error


def test_a_lying_benchmark_is_corrected_by_what_the_market_observed_and_flagged(
    model: LanguageModel, carol: User, settings: Any
) -> None:
    liar = provider(carol, "liar", ns=1)  # claims 1 ns per layer-token: the cheapest ask there is
    honest = provider(carol, "honest", ns=400_000)
    assert selectors.provider_ask(liar) < selectors.provider_ask(honest)
    services.provider_record_speed(provider_id=liar.pk, ns_per_layer_token=900_000, steps=5)
    liar.refresh_from_db()
    assert liar.speed_flagged and liar.speed_ns_per_layer_token == 1  # flagged; too few samples to price by yet
    services.provider_record_speed(provider_id=liar.pk, ns_per_layer_token=900_000, steps=settings.SPEED_MIN_SAMPLES)
    liar.refresh_from_db()
    assert liar.speed_ns_per_layer_token == 900_000  # now priced and placed by what it did
    assert selectors.provider_ask(liar) > selectors.provider_ask(honest)
    assert [p.pk for p in selectors.providers_free(exclude=set())] == [honest.pk, liar.pk]
    body = APIClient()
    body.force_authenticate(carol)
    listed = {p["name"]: p for p in body.get("/api/providers/").json()}
    assert listed["liar"]["speed_flagged"] and listed["liar"]["observed_ns_per_layer_token"] == 900_000


def test_the_observed_speed_is_the_latest_jobs_median_so_one_slow_job_moves_it_little_and_its_spread_shows(
    model: LanguageModel, carol: User, settings: Any
) -> None:
    settings.SPEED_HISTORY_JOBS = 5
    steady = provider(carol, "steady", ns=500_000)
    for ns in (500_000, 520_000, 480_000):
        services.provider_record_speed(provider_id=steady.pk, ns_per_layer_token=ns, steps=10)
    services.provider_record_speed(provider_id=steady.pk, ns_per_layer_token=9_000_000, steps=10)  # a bad moment
    steady.refresh_from_db()
    assert steady.observed_ns_per_layer_token == 500_000 and not steady.speed_flagged  # a mean would say 2.6 ms
    assert selectors.observed_spread(steady) == {"jobs": 4, "low": 480_000, "high": 9_000_000}
    for _ in range(5):  # it really became slow: within a few jobs the market sees it, and the oldest jobs drop out
        services.provider_record_speed(provider_id=steady.pk, ns_per_layer_token=2_000_000, steps=10)
    steady.refresh_from_db()
    assert steady.observed_ns_per_layer_token == 2_000_000 and len(steady.observed_jobs) == 5
    assert steady.speed_flagged  # more than SPEED_FLAG_RATIO times its benchmark
    body = APIClient()
    body.force_authenticate(carol)
    listed = {p["name"]: p for p in body.get("/api/providers/").json()}
    assert listed["steady"]["observed_spread"] == {"jobs": 5, "low": 2_000_000, "high": 2_000_000}


def test_a_posted_ask_is_respected_in_clearing_and_never_below_the_platforms_figure(
    model: LanguageModel, alice: User, carol: User, launches: list[int]
) -> None:
    from ledger import selectors as ledger_selectors
    from market.models import Assignment

    dear = provider(carol, "dear", ns=200_000, posted_ask=60)
    cheap = provider(carol, "cheap", ns=200_000, posted_ask=1)  # below the platform's figure: the figure stands
    assert selectors.provider_ask(dear) == 60 and selectors.provider_ask(cheap) == selectors.platform_floor(cheap) > 1
    job = bid(alice, model)  # from the quote, which sees the posted ask
    services.clear_market()
    terms = {t.provider_id: t for t in Assignment.objects.filter(job=job)}
    assert terms[dear.pk].ask == 60 and terms[dear.pk].unit_price >= 60  # the provider gets at least its ask
    assert terms[cheap.pk].ask == selectors.platform_floor(cheap)
    paid = sum(t.unit_price * t.work for t in terms.values())
    assert paid <= Job.objects.get(pk=job.pk).max_price  # the buyer pays at most its bid
    assert ledger_selectors.ledger_drift().ok


def test_the_owner_posts_an_ask_through_the_api_and_nobody_else_can(
    model: LanguageModel, alice: User, carol: User
) -> None:
    mine = provider(carol, "mine", ns=200_000)
    owner, other = APIClient(), APIClient()
    owner.force_authenticate(carol)
    other.force_authenticate(alice)
    path = f"/api/provider/capacity/{mine.pk}/ask/"
    answer = owner.patch(path, {"ask": 75}, format="json")
    assert answer.status_code == 200 and (answer.json()["posted_ask"], answer.json()["ask"]) == (75, 75)
    assert answer.json()["platform_ask"] == selectors.platform_floor(mine)
    assert other.patch(path, {"ask": 1}, format="json").status_code == 404
    assert APIClient().patch(path, {"ask": 1}, format="json").status_code == 401
    assert owner.patch(path, {"ask": -3}, format="json").json()["code"] == "invalid_input"
    assert owner.patch(path, {"ask": None}, format="json").json()["ask"] == selectors.platform_floor(mine)
    assert Provider.objects.get(pk=mine.pk).posted_ask is None
