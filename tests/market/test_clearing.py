"""Auction rounds over the real book (bids escrowed through the ledger, providers as stored), settlement of every
way a job can end, the platform's asks, and the clocks that start rounds (the embedded loop, the debounced nudge).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from config.celery import app as celery_app
from config.errors import Conflict
from ledger import selectors as ledger_selectors
from ledger import services as ledger_services
from market import clock, scheduling, selectors, services, tasks
from market.auction.pricing import platform_ask
from market.models import Assignment, AuctionRound, Job, LanguageModel, Provider
from market.placement import AuctionPlacement
from market.services.settlement import step_tokens
from verification import tasks as verification_tasks

pytestmark = pytest.mark.django_db

GRANT = 1_000_000  # settings.SIGNUP_GRANT


def provider(owner: User, name: str, *, ns: int | None = 1_000_000, slots: int = 1, **fields: Any) -> Provider:
    online = {"state": Provider.State.ONLINE, "channel_name": f"chan.{name}", "last_seen": timezone.now()}
    return Provider.objects.create(user=owner, name=name, ns_per_layer_token=ns, slots=slots, **{**online, **fields})


def bid(buyer: User, model: LanguageModel, **fields: Any) -> Job:
    return services.job_create(
        buyer=buyer,
        model=model,
        messages=[{"role": "user", "content": "hello there"}],
        max_new_tokens=fields.pop("max_new_tokens", 8),
        temperature=Decimal(0),
        top_p=Decimal(1),
        seed=None,
        **fields,
    )


# --- rounds ----------------------------------------------------------------------------------------------------


def test_an_empty_book_runs_no_round(launches: list[int]) -> None:
    assert services.clear_market() is None
    assert AuctionRound.objects.count() == 0


def test_a_round_places_a_bid_on_distinct_providers_at_prices_within_ask_and_bid(
    model: LanguageModel,
    alice: User,
    carol: User,
    launches: list[int],
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    fast, slow = provider(carol, "fast", ns=500_000), provider(carol, "slow", ns=2_000_000)
    provider(carol, "unbenchmarked", ns=None)
    provider(carol, "gone", state=Provider.State.OFFLINE)
    job = bid(alice, model)
    with django_capture_on_commit_callbacks(execute=True):
        round_ = services.clear_market()
    assert round_ is not None
    assert (round_.n_jobs, round_.n_providers, round_.n_winners, round_.n_losers, round_.n_placed) == (1, 2, 1, 0, 1)
    assert round_.solver == "cpsat" and round_.status == "optimal" and round_.optimality_gap == 0
    assert launches == [job.pk]
    job.refresh_from_db()
    assert (job.state, job.auction_round_id) == (Job.State.ALLOCATED, round_.pk)
    terms = list(Assignment.objects.filter(job=job).order_by("hop"))
    assert [t.hop for t in terms] == [0, 1] and {t.provider_id for t in terms} == {fast.pk, slow.pk}
    work = 2 * (job.prompt_tokens + job.max_new_tokens)  # each shard has 2 layers
    bid_per_unit = job.max_price / (2 * work)
    for term in terms:
        assert term.work == work and term.ask == selectors.provider_ask(term.provider)
        # The provider gets at least its ask; a shard asking less than the bid per unit trades at most at it (one
        # asking more trades at its ask, paid for by the job's surplus on the other: docs/pricing.md).
        assert term.ask <= term.unit_price <= max(bid_per_unit, term.ask)
    # The bid named no price: it offered the quote (the cheapest pipeline's asks) plus the margin.
    asks = sum(selectors.provider_ask(p) * 2 for p in (fast, slow))
    tokens = job.prompt_tokens + job.max_new_tokens
    assert job.max_price == asks * tokens * (10_000 + settings.QUOTE_MARGIN_BPS) // 10_000
    assert {(t["job"], t["unit_price"]) for t in round_.prices} == {(job.pk, t.unit_price) for t in terms}
    assert sum(t.unit_price * t.work for t in terms) == round_.buyer_payments <= job.max_price
    assert list(Provider.objects.filter(busy_slots=1).values_list("pk", flat=True)) == sorted([fast.pk, slow.pk])


def test_a_losing_bid_stays_in_the_book_with_rising_priority(
    model: LanguageModel, alice: User, carol: User, launches: list[int]
) -> None:
    provider(carol, "a"), provider(carol, "b")
    job = bid(alice, model, max_price=1)  # below the asks of any pipeline
    for expected in (1, 2):
        round_ = services.clear_market()
        assert round_ is not None and (round_.n_winners, round_.n_losers, round_.n_placed) == (0, 1, 0)
        job.refresh_from_db()
        assert (job.state, job.priority) == (Job.State.QUEUED, expected)
    assert launches == [] and not Provider.objects.filter(busy_slots__gt=0).exists()


def test_a_winner_whose_slot_was_taken_meanwhile_stays_in_the_book(
    model: LanguageModel, alice: User, carol: User, launches: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = provider(carol, "a"), provider(carol, "b")
    job = bid(alice, model)
    stale = list(selectors.providers_free(exclude=set()))  # read before another runner took b's only slot
    Provider.objects.filter(pk=b.pk).update(busy_slots=1)
    monkeypatch.setattr(selectors, "providers_free", lambda exclude: stale)
    round_ = services.clear_market()
    assert round_ is not None and (round_.n_winners, round_.n_placed) == (1, 0)
    job.refresh_from_db()
    assert (job.state, job.priority, job.auction_round_id) == (Job.State.QUEUED, 1, None)
    assert not Assignment.objects.exists() and launches == []
    assert Provider.objects.get(pk=a.pk).busy_slots == 0, "the claim on a was rolled back with the job"


def test_an_expired_bid_is_refunded_and_its_stream_ends(
    model: LanguageModel,
    alice: User,
    launches: list[int],
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    job = bid(alice, model, max_price=7_000, expires_in_seconds=1)
    assert ledger_selectors.balances_of(user=alice).available == GRANT - 7_000
    layer = get_channel_layer()
    listener = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(selectors.job_group(job.pk), listener)
    with django_capture_on_commit_callbacks(execute=True):
        services.clear_market(now=timezone.now() + timedelta(seconds=2))
    job.refresh_from_db()
    assert (job.state, job.error_code, job.cost["refunded"]) == (Job.State.EXPIRED, "expired", 7_000)
    assert ledger_selectors.balances_of(user=alice).available == GRANT
    event = async_to_sync(layer.receive)(listener)
    assert (event["type"], event["state"]) == ("job.done", "expired")


def test_cancelling_an_allocated_job_frees_its_slots_and_refunds_it(
    model: LanguageModel, alice: User, carol: User, launches: list[int]
) -> None:
    provider(carol, "a"), provider(carol, "b")
    job = bid(alice, model)
    services.clear_market()
    assert Provider.objects.filter(busy_slots=1).count() == 2
    services.job_cancel(job=Job.objects.get(pk=job.pk))
    assert not Provider.objects.filter(busy_slots__gt=0).exists()
    assert Job.objects.get(pk=job.pk).state == Job.State.CANCELLED
    assert ledger_selectors.balances_of(user=alice).available == GRANT
    assert services.job_claim(job_id=job.pk) is None, "no runner may start it afterwards"


# --- placement from the round ----------------------------------------------------------------------------------


def test_the_runner_takes_the_assigned_providers_and_falls_back_when_one_has_gone(
    model: LanguageModel, alice: User, carol: User, launches: list[int]
) -> None:
    a, b, spare = provider(carol, "a", ns=500_000), provider(carol, "b", ns=600_000), provider(carol, "spare", ns=10**8)
    Provider.objects.filter(pk=spare.pk).update(busy_slots=1)  # busy during the round, so it gets no hop
    job = bid(alice, model)
    services.clear_market()
    Provider.objects.filter(pk=spare.pk).update(busy_slots=0)
    terms = {t.hop: t for t in Assignment.objects.filter(job=job)}
    gone = terms[1].provider_id
    Provider.objects.filter(pk=gone).update(state=Provider.State.OFFLINE)  # left between the round and the start
    claimed = services.job_claim(job_id=job.pk)
    assert claimed is not None
    job = claimed
    placement = AuctionPlacement()
    shards = [selectors.shard_descriptor(s) for s in selectors.shard_chain(model=model, plan=None)]
    first = placement.place(job=job, shard=shards[0], exclude=set())
    second = placement.place(job=job, shard=shards[1], exclude={first.pk} if first else set())
    assert first is not None and first.pk == terms[0].provider_id
    assert second is not None and second.pk == spare.pk
    slots = dict(Provider.objects.values_list("pk", "busy_slots"))
    assert slots == {terms[0].provider_id: 1, gone: 0, spare.pk: 1}
    assert {a.pk, b.pk} == {terms[0].provider_id, gone}


def test_slots_of_hops_never_placed_are_given_back(
    model: LanguageModel, alice: User, carol: User, launches: list[int]
) -> None:
    provider(carol, "a"), provider(carol, "b")
    job = bid(alice, model)
    services.clear_market()
    claimed = services.job_claim(job_id=job.pk)
    assert claimed is not None
    job = claimed
    placement = AuctionPlacement()
    shard = selectors.shard_descriptor(selectors.shard_chain(model=model, plan=None)[0])
    placement.place(job=job, shard=shard, exclude=set())
    placement.release_unused()
    assert Provider.objects.filter(busy_slots=1).count() == 1, "only the placed hop keeps its slot"


# --- settlement ------------------------------------------------------------------------------------------------


def _ran(job: Job, state: str, pipeline: list[dict[str, Any]]) -> Job:
    Job.objects.filter(pk=job.pk).update(
        state=state, pipeline=pipeline, started_at=timezone.now(), finished_at=timezone.now()
    )
    return Job.objects.get(pk=job.pk)


def _placed(model: LanguageModel, alice: User, carol: User) -> tuple[Job, dict[int, Assignment]]:
    provider(carol, "a", ns=500_000), provider(carol, "b", ns=600_000)
    job = bid(alice, model, max_price=100_000)
    services.clear_market()
    job.refresh_from_db()
    return job, {t.hop: t for t in Assignment.objects.filter(job=job)}


def _served(terms: dict[int, Assignment], *, until_step: int) -> list[dict[str, Any]]:
    """The pipeline record of a job whose assigned providers served steps [0, until_step)."""
    return [
        {"hop": h, "shard": t.shard.shard_id, "provider": t.provider_id, "from_step": 0, "until_step": until_step}
        for h, t in terms.items()
    ]


def test_step_tokens_count_the_prompt_at_step_zero_and_one_token_a_step_after() -> None:
    assert step_tokens(0, 1, prompt_tokens=9) == 9
    assert step_tokens(0, 5, prompt_tokens=9) == 13
    assert step_tokens(3, 5, prompt_tokens=9) == 2
    assert step_tokens(3, 3, prompt_tokens=9) == 0


def test_a_cancelled_running_job_pays_for_the_steps_it_ran_and_no_more(
    model: LanguageModel, alice: User, carol: User, launches: list[int]
) -> None:
    job, terms = _placed(model, alice, carol)
    job = services.job_settle(job_id=_ran(job, Job.State.CANCELLED, _served(terms, until_step=4)).pk)
    work = 2 * (job.prompt_tokens + 3)
    expected = sum(t.unit_price * work for t in terms.values())
    assert job.cost["paid"] == expected and job.cost["refunded"] == 100_000 - expected
    assert ledger_selectors.balances_of(user=alice).available == GRANT - expected
    assert ledger_selectors.balances_of(user=carol).pending == expected - job.cost["fee"]
    assert services.job_settle(job_id=job.pk).cost == job.cost, "settling twice is settling once"
    assert ledger_selectors.ledger_drift().ok


def test_a_failed_job_pays_for_the_steps_that_reached_the_buyer_and_refunds_the_rest(
    model: LanguageModel, alice: User, carol: User, launches: list[int]
) -> None:
    job, terms = _placed(model, alice, carol)
    job = services.job_settle(job_id=_ran(job, Job.State.FAILED, _served(terms, until_step=3)).pk)
    work = 2 * (job.prompt_tokens + 2)  # steps 0 (the prompt), 1 and 2 on each two-layer shard
    expected = sum(t.unit_price * work for t in terms.values())
    assert job.cost["paid"] == expected and job.cost["refunded"] == 100_000 - expected
    assert ledger_selectors.balances_of(user=alice).available == GRANT - expected
    assert ledger_selectors.balances_of(user=carol).pending == expected - job.cost["fee"]
    assert ledger_selectors.ledger_drift().ok


def test_a_job_that_failed_before_any_step_reached_the_buyer_is_refunded_in_full(
    model: LanguageModel, alice: User, carol: User, launches: list[int]
) -> None:
    job, terms = _placed(model, alice, carol)
    job = services.job_settle(job_id=_ran(job, Job.State.FAILED, _served(terms, until_step=0)).pk)
    assert (job.cost["paid"], job.cost["refunded"], job.cost["lines"]) == (0, 100_000, [])
    assert ledger_selectors.balances_of(user=alice).available == GRANT


def test_only_a_finished_job_is_settled(model: LanguageModel, alice: User, launches: list[int]) -> None:
    job = bid(alice, model)
    with pytest.raises(Conflict, match="only a finished job is settled"):
        services.job_settle(job_id=job.pk)


def test_a_round_settles_a_finished_job_its_runner_left_unsettled(
    model: LanguageModel, alice: User, carol: User, launches: list[int]
) -> None:
    job, terms = _placed(model, alice, carol)
    _ran(job, Job.State.DONE, _served(terms, until_step=2))
    services.clear_market()
    job.refresh_from_db()
    assert job.settled_at is not None and job.cost["paid"] == sum(
        t.unit_price * 2 * (job.prompt_tokens + 1) for t in terms.values()
    )


# --- asks ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "reliability", "ask"),
    [
        (1_000_000, 1000, 10),  # 1 ms per layer-token at 10,000 base units per compute-second
        (500_000, 1000, 5),  # twice as fast: half the ask
        (1_000_000, 500, 20),  # half its steps redone elsewhere: twice the ask
        (1_000_000, 10, 100),  # reliability below the floor (100 ‰) counts as the floor
        (1_234_567, 1000, 13),  # rounded up
        (1_000, 1000, 1),  # never free
    ],
)
def test_the_platform_ask_follows_speed_and_reliability(ns: int, reliability: int, ask: int) -> None:
    assert (
        platform_ask(
            ns_per_layer_token=ns, reliability_permille=reliability, per_compute_second=10_000, floor_permille=100
        )
        == ask
    )


# --- what starts a round ---------------------------------------------------------------------------------------


class ClockWatch:
    """The embedded clock's auction loop, seen as events a test awaits: each wait it starts (its timeout, in
    seconds) and each round it runs (the bids the round saw). Rounds are the fake `clear_market` below, run in the
    clock's worker thread; `bids` is the book the fake rounds and `book_empty` read."""

    WAIT = 10  # seconds for any one event: far above the short intervals, far below the 60 s ones

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bids = 0
        self.loop = asyncio.get_running_loop()
        self.waits: asyncio.Queue[float] = asyncio.Queue()
        self.rounds: asyncio.Queue[int] = asyncio.Queue()
        monkeypatch.setattr(services, "clear_market", self._clear_market)
        monkeypatch.setattr(selectors, "book_empty", lambda: not self.bids)
        monkeypatch.setattr(clock, "asyncio", _Timed(self.waits))
        # The clock's other database work stays out of the test (a thread's connection would outlive it).
        monkeypatch.setattr(ledger_services, "release_due_earnings", lambda **kwargs: None)
        monkeypatch.setattr(verification_tasks, "advance", lambda: None)

    def _clear_market(self) -> object | None:
        seen = self.bids
        self.loop.call_soon_threadsafe(self.rounds.put_nowait, seen)
        if seen == 1:  # this round places the one bid: the book is empty after it
            self.bids = 0
            return object()
        return object() if seen else None  # bids left waiting (unmatched), or None for an empty book

    async def next_wait(self) -> float:
        return await asyncio.wait_for(self.waits.get(), self.WAIT)

    async def next_round(self) -> int:
        return await asyncio.wait_for(self.rounds.get(), self.WAIT)


class _Timed:
    """`asyncio` as market.clock sees it, but each wait of its auction loop recorded with its timeout."""

    def __init__(self, waits: asyncio.Queue[float]) -> None:
        self.waits = waits

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def wait_for(self, awaitable: Any, timeout: float) -> Any:
        if asyncio.current_task() is clock._TASK:  # not the disputes' loop, which waits the same way
            self.waits.put_nowait(timeout)
        return await asyncio.wait_for(awaitable, timeout)


def test_the_embedded_clock_clears_soon_after_a_nudge(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.MARKET_CLOCK, settings.AUCTION_EVERY_SECONDS, settings.AUCTION_NUDGE_SECONDS = True, 60, 0.05
    settings.ORCHESTRATOR = "server"  # the embedded profile's clock, whichever profile the suite runs on

    async def nudged() -> None:
        watch = ClockWatch(monkeypatch)
        clock.start()
        assert await watch.next_wait() == 60  # the next round is a minute away...
        scheduling.auction_nudge()
        assert await watch.next_round() == 0  # ...but a nudge brings it within WAIT
        assert watch.rounds.empty()

    asyncio.run(nudged())


def test_the_embedded_clock_waits_longer_while_the_book_is_empty(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rounds every AUCTION_EVERY_SECONDS while bids wait; after a round that left the book empty (it placed every
    bid, or there was none), the next waits AUCTION_IDLE_SECONDS unless a nudge (a new bid) comes first."""
    settings.MARKET_CLOCK, settings.AUCTION_NUDGE_SECONDS, settings.ORCHESTRATOR = True, 0.01, "server"
    settings.AUCTION_EVERY_SECONDS, settings.AUCTION_IDLE_SECONDS = 0.05, 60

    async def scenario() -> None:
        watch = ClockWatch(monkeypatch)
        clock.start()
        assert await watch.next_wait() == 0.05  # a fresh clock: the short interval
        assert await watch.next_round() == 0  # which runs out on an empty book
        assert await watch.next_wait() == 60, "the clock kept its short interval over an empty book"
        watch.bids = 1  # a bid that the next round places
        scheduling.auction_nudge()
        assert await watch.next_round() == 1
        assert await watch.next_wait() == 60, "the clock kept its short interval after a round that placed every bid"
        watch.bids = 2  # bids that stay in the book, unmatched
        scheduling.auction_nudge()
        assert await watch.next_round() == 2
        assert await watch.next_wait() == 0.05, "a nudge did not bring the short interval back while bids wait"
        assert await watch.next_round() == 2  # and it runs out: a round with no nudge while the bids wait

    asyncio.run(scenario())


def test_nudges_within_the_window_start_one_celery_round(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.ORCHESTRATOR, settings.REDIS_URL, settings.AUCTION_NUDGE_SECONDS = "celery", "redis://127.0.0.1:6379/9", 1
    redis.Redis.from_url(settings.REDIS_URL).delete(scheduling.NUDGE_KEY)
    scheduled: list[dict[str, Any]] = []
    monkeypatch.setattr(celery_app, "send_task", lambda name, **kw: scheduled.append({"task": name, **kw}))
    for _ in range(5):
        scheduling.auction_nudge()
    assert scheduled == [{"task": tasks.clear_market.name, "countdown": 1}]
    redis.Redis.from_url(settings.REDIS_URL).delete(scheduling.NUDGE_KEY)  # the window has passed
    scheduling.auction_nudge()
    assert len(scheduled) == 2
    # Within the window, but the round it scheduled has begun: a bid nudging now is not in that round's book.
    monkeypatch.setattr(services, "clear_market", lambda: None)
    tasks.clear_market()
    scheduling.auction_nudge()
    assert len(scheduled) == 3


def test_a_placed_job_whose_runner_never_started_goes_back_into_the_book(
    model: LanguageModel, alice: User, carol: User, launches: list[int]
) -> None:
    provider(carol, "a"), provider(carol, "b")
    job = bid(alice, model)
    services.clear_market()
    assert Job.objects.get(pk=job.pk).state == Job.State.ALLOCATED
    services.clear_market(now=timezone.now() + timedelta(seconds=30))  # still within the timeout
    assert Job.objects.get(pk=job.pk).state == Job.State.ALLOCATED
    round_ = services.clear_market(now=timezone.now() + timedelta(seconds=61))
    job.refresh_from_db()
    # Reclaimed (slots freed, priority up), then placed again by the same round on the same two providers.
    assert round_ is not None and round_.n_placed == 1
    assert (job.state, job.priority, job.auction_round_id) == (Job.State.ALLOCATED, 1, round_.pk)
    assert Provider.objects.filter(busy_slots=1).count() == 2, "the old round's slots were given back"
    assert Assignment.objects.filter(job=job, auction_round=round_).count() == 2


def test_a_job_whose_runner_died_is_ended_by_the_next_round_paying_what_reached_the_buyer(
    model: LanguageModel, alice: User, carol: User, launches: list[int], settings: Any
) -> None:
    from market.models import Provider

    settings.RUNNER_MAX_RESUMES = 0  # ended, never resumed
    job, terms = _lost(model, alice, carol, settings, tokens=[5, 6, 7])
    assert Provider.objects.filter(busy_slots__gt=0).count() == 2
    services.clear_market()
    job.refresh_from_db()
    assert (job.state, job.error_code) == (Job.State.FAILED, "runner_lost") and job.finished_at is not None
    assert [(e["until_step"], e["ended"]) for e in job.pipeline] == [(3, "runner_lost"), (3, "runner_lost")]
    work = 2 * (job.prompt_tokens + 2)  # steps 0, 1 and 2 reached the buyer
    expected = sum(t.unit_price * work for t in terms.values())
    assert job.cost["paid"] == expected and job.cost["refunded"] == 100_000 - expected
    assert not Provider.objects.filter(busy_slots__gt=0).exists()  # the dead runner's slots are free again
    assert ledger_selectors.ledger_drift().ok
    services.clear_market()  # ended once
    assert Job.objects.get(pk=job.pk).cost == job.cost


def test_a_job_whose_runner_renews_its_lease_is_left_running(
    model: LanguageModel, alice: User, carol: User, launches: list[int]
) -> None:
    job, _ = _placed(model, alice, carol)
    Job.objects.filter(pk=job.pk).update(state=Job.State.RUNNING, started_at=timezone.now())
    assert services.job_runner_beat(job_id=job.pk)
    services.clear_market()
    assert Job.objects.get(pk=job.pk).state == Job.State.RUNNING


def _lost(
    model: LanguageModel, alice: User, carol: User, settings: Any, tokens: list[int]
) -> tuple[Job, dict[int, Assignment]]:
    """A placed job whose runner recorded its pipeline, stored `tokens` and then lost its lease (its server died)."""
    job, terms = _placed(model, alice, carol)
    pipeline = [
        {**entry, "until_step": None, "session": f"s{entry['hop']}", "channel": terms[entry["hop"]].channel_name}
        for entry in _served(terms, until_step=0)
    ]
    long_ago = timezone.now() - timedelta(seconds=settings.RUNNER_LEASE_SECONDS + 1)
    Job.objects.filter(pk=job.pk).update(
        state=Job.State.RUNNING, started_at=long_ago, runner_seen_at=long_ago, tokens=tokens, pipeline=pipeline
    )
    return job, terms


def test_a_job_whose_runner_died_is_taken_over_and_handed_to_a_new_runner_fencing_the_old_one(
    model: LanguageModel,
    alice: User,
    carol: User,
    launches: list[int],
    settings: Any,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    from market.models import Provider

    job, _ = _lost(model, alice, carol, settings, tokens=[5, 6, 7])
    with django_capture_on_commit_callbacks(execute=True):
        services.clear_market()
    job.refresh_from_db()
    assert launches == [-job.pk], "handed to a new runner"
    assert (job.state, job.runner_epoch, job.finished_at) == (Job.State.RUNNING, 1, None)
    # The lost runner's placements end at what reached the buyer, their slots freed for the new pipeline.
    assert [(e["until_step"], e["ended"]) for e in job.pipeline] == [(3, "runner_lost"), (3, "runner_lost")]
    assert not Provider.objects.filter(busy_slots__gt=0).exists()
    # The old runner, were it only slow, can no longer renew, store or finish; the new one can.
    assert not services.job_runner_beat(job_id=job.pk, epoch=0)
    assert not services.job_progress(job_id=job.pk, epoch=0, tokens=[1], text="x", pipeline=[])
    services.job_finish(job_id=job.pk, epoch=0, state=Job.State.DONE, tokens=[1], text="x", pipeline=[], timings={})
    assert Job.objects.get(pk=job.pk).state == Job.State.RUNNING
    assert services.job_resume_claim(job_id=job.pk, epoch=0) is None
    resumed = services.job_resume_claim(job_id=job.pk, epoch=1)
    assert resumed is not None and resumed.tokens == [5, 6, 7]
    assert services.job_runner_beat(job_id=job.pk, epoch=1)
    with django_capture_on_commit_callbacks(execute=True):
        services.clear_market()  # its lease is fresh: left alone
    assert launches == [-job.pk]


def test_a_lost_job_waits_for_free_providers_within_the_bound_then_is_ended(
    model: LanguageModel,
    alice: User,
    carol: User,
    launches: list[int],
    settings: Any,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    from market.models import Provider

    job, _ = _lost(model, alice, carol, settings, tokens=[5])
    Provider.objects.update(state=Provider.State.OFFLINE)  # its providers went with the server; none is free
    with django_capture_on_commit_callbacks(execute=True):
        services.clear_market()
    job.refresh_from_db()
    assert (job.state, job.runner_epoch, launches) == (Job.State.RUNNING, 0, [])  # still waiting
    later = timezone.now() + timedelta(seconds=settings.RUNNER_RESUME_WITHIN_SECONDS + 1)
    with django_capture_on_commit_callbacks(execute=True):
        services.clear_market(now=later)
    job.refresh_from_db()
    assert (job.state, job.error_code, launches) == (Job.State.FAILED, "runner_lost", [])
    assert job.cost["paid"] > 0 and job.cost["refunded"] == job.max_price - job.cost["paid"]


def test_a_job_resumed_as_often_as_allowed_is_ended_when_it_is_lost_again(
    model: LanguageModel,
    alice: User,
    carol: User,
    launches: list[int],
    settings: Any,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    job, _ = _lost(model, alice, carol, settings, tokens=[5, 6])
    Job.objects.filter(pk=job.pk).update(runner_epoch=settings.RUNNER_MAX_RESUMES)
    with django_capture_on_commit_callbacks(execute=True):
        services.clear_market()
    job.refresh_from_db()
    assert (job.state, job.error_code, launches) == (Job.State.FAILED, "runner_lost", [])
