"""The market's reads behind the REST API: each returns only what its owner may see, in the API's order and size."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from config.errors import NotFound
from ledger import services as ledger_services
from market import selectors
from market.models import AuctionRound, Job, LanguageModel, Provider

pytestmark = pytest.mark.django_db


def make_job(buyer: User, model: LanguageModel, state: str = Job.State.QUEUED) -> Job:
    return Job.objects.create(buyer=buyer, model=model, messages=[{"role": "user", "content": "hi"}], state=state)


def make_model(name: str, quant: str = "f32") -> LanguageModel:
    return LanguageModel.objects.create(name=name, quant=quant, config={"n_layers": 4}, tokenizer_sha256="0" * 64)


@pytest.fixture
def bob() -> User:
    return User.objects.create_user("bob")


def test_jobs_of_buyer_holds_only_the_buyers_own_jobs(model: LanguageModel, alice: User, bob: User) -> None:
    mine = [make_job(alice, model), make_job(alice, model)]
    make_job(bob, model)
    assert list(selectors.jobs_of_buyer(buyer=alice)) == mine[::-1]
    assert list(selectors.jobs_of_buyer(buyer=User.objects.create_user("nobody"))) == []


def test_jobs_of_buyer_keeps_the_newest_up_to_the_limit(model: LanguageModel, alice: User) -> None:
    jobs = [make_job(alice, model) for _ in range(5)]
    assert list(selectors.jobs_of_buyer(buyer=alice, limit=3)) == jobs[:1:-1]


def test_jobs_of_buyer_filters_by_state(model: LanguageModel, alice: User, bob: User) -> None:
    bid = make_job(alice, model)
    make_job(alice, model, Job.State.DONE)
    make_job(bob, model)
    assert list(selectors.jobs_of_buyer(buyer=alice, state=Job.State.QUEUED)) == [bid]


def test_model_available_is_the_newest_import_of_the_name_and_quant() -> None:
    f32, q4 = make_model("m", "f32"), make_model("m", "q4")
    make_model("other")
    assert selectors.model_available(name="m", quant=None) == q4
    assert selectors.model_available(name="m", quant="f32") == f32


@pytest.mark.parametrize(
    ("name", "quant", "message"),
    [
        ("nope", None, "model nope is not available; see /api/models/"),
        ("m", "q4", "model m (q4) is not available; see /api/models/"),
    ],
)
def test_model_available_refuses_an_unknown_name_or_quant(name: str, quant: str | None, message: str) -> None:
    make_model("m", "f32")
    with pytest.raises(NotFound) as refused:
        selectors.model_available(name=name, quant=quant)
    assert (refused.value.code, refused.value.message) == ("unknown_model", message)


def test_models_listed_are_by_name_then_quant_with_their_shards(model: LanguageModel) -> None:
    other = make_model("a-first", "q4")
    listed = list(selectors.models_listed())
    assert listed == [other, model]
    assert [s.shard_id for s in listed[1].shards.all()] == ["tiny:f32:0-2", "tiny:f32:2-4"]


def test_providers_online_by_benchmark_puts_the_unbenchmarked_last(alice: User) -> None:
    online = {"state": Provider.State.ONLINE, "channel_name": "specific.x", "last_seen": timezone.now()}
    new = Provider.objects.create(user=alice, name="new", **online)
    slow = Provider.objects.create(user=alice, name="slow", ns_per_layer_token=900, **online)
    fast = Provider.objects.create(user=alice, name="fast", ns_per_layer_token=100, **online)
    Provider.objects.create(user=alice, name="gone", state=Provider.State.OFFLINE, ns_per_layer_token=1)
    assert list(selectors.providers_online_by_benchmark()) == [fast, slow, new]


def test_providers_of_user_holds_only_the_users_own_providers(alice: User, bob: User) -> None:
    first = Provider.objects.create(user=alice, name="first")
    Provider.objects.create(user=bob, name="theirs")
    second = Provider.objects.create(user=alice, name="second", state=Provider.State.ONLINE)
    assert list(selectors.providers_of_user(user=alice)) == [first, second]
    assert list(selectors.providers_of_user(user=User.objects.create_user("nobody"))) == []


def test_provider_releases_holds_only_the_providers_own_payouts_newest_first(alice: User, bob: User) -> None:
    carol = User.objects.create_user("carol")
    for ref in ("job-1", "job-2"):
        ledger_services.escrow_for_job(user=alice, amount=1_000, job_ref=ref)
        ledger_services.settle_job(job_ref=ref, buyer=alice, payouts=[(bob, 600), (carol, 100)], fee=30)
    assert [(r.job_ref, r.amount) for r in selectors.provider_releases(provider=bob)] == [
        ("job-2", 600),
        ("job-1", 600),
    ]
    assert [r.job_ref for r in selectors.provider_releases(provider=bob, limit=1)] == ["job-2"]
    assert list(selectors.provider_releases(provider=alice)) == []


def test_auction_rounds_latest_keeps_the_newest_up_to_the_limit() -> None:
    fields = {"requested": "auto", "solver": "greedy", "status": "heuristic", "wall_time_s": 0.01, "welfare": 5}
    counts = {"n_jobs": 2, "n_providers": 3, "n_winners": 1, "n_losers": 1, "n_placed": 1, "buyer_payments": 9}
    rounds = [AuctionRound.objects.create(objective=i, fees=1, **fields, **counts) for i in range(4)]
    assert list(selectors.auction_rounds_latest(limit=3)) == rounds[:0:-1]
    assert list(selectors.auction_rounds_latest()) == rounds[::-1]
