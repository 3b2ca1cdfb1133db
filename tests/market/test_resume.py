"""A job taken over from a lost runner (its server died: market/services/runners.py), resumed by a new runner
against the real provider consumer and channel layer, with scripted providers that run the tiny model's real
shards. The new runner replays the prompt and the delivered tokens through a fresh pipeline and generates on: the
buyer gets exactly the tokens an uninterrupted run gives (greedy and sampled), the replay is not charged, and the
ledger adds up. (tests/e2e/test_runner_lost.py SIGKILLs real servers.)"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth.models import User
from django.utils import timezone

from inference import wire
from inference.generate import SamplingParams, generate
from ledger import selectors as ledger_selectors
from market import model_files, selectors, services
from market.models import Assignment, Job, LanguageModel, Provider
from market.orchestrator import run_job
from market.services.settlement import RUNNER_LOST
from tests.market.test_orchestrator import ScriptedProvider, serving
from tests.waiting import until

pytestmark = pytest.mark.django_db(transaction=True)

MAX_NEW = 12
DELIVERED = 4  # tokens the lost runner had delivered
MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.fixture(autouse=True)
def rounds_only(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.STEP_DEADLINE_SECONDS = 5
    monkeypatch.setattr("market.scheduling.job_launch", lambda job_id: None)  # the test plays the runners itself
    monkeypatch.setattr("market.scheduling.auction_nudge", lambda: None)


class HeldProvider(ScriptedProvider):
    """Holds every step from `hold_at` on until `release` is set: the job is taken over in the middle, whatever the
    speed of the machine."""

    def __init__(self, *args: Any, hold_at: int, release: asyncio.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hold_at, self.release = hold_at, release

    async def _step(self, data: bytes) -> None:
        if wire.decode(data).step >= self.hold_at:
            await self.release.wait()
        await super()._step(data)


def bid(model: LanguageModel, temperature: Decimal = Decimal(0)) -> Job:
    """Alice's bid for the sample job at the default price."""
    alice = services.account_open(username="alice")[0]
    return services.job_create(
        buyer=alice,
        model=model,
        messages=MESSAGES,
        max_new_tokens=MAX_NEW,
        temperature=temperature,
        top_p=Decimal(1),
        seed=7,
    )


def carol_token() -> str:
    return services.account_open(username="carol")[1]


async def place(providers: Sequence[ScriptedProvider]) -> None:
    """Connect the providers (each answers its benchmark challenge) and run a round, which must place the bid."""
    for provider in providers:
        await provider.start()  # benchmarked when it returns
    round_ = await sync_to_async(services.clear_market)()
    assert round_ is not None and round_.n_placed == 1


def uninterrupted(model: LanguageModel, sampling: SamplingParams) -> list[int]:
    chain = model_files.local_chain(selectors.shard_chain(model=model, plan="0-2,2-4"))
    tokenizer = model_files.model_tokenizer(model)
    ids = tokenizer.encode_chat(MESSAGES)
    return generate(chain, ids, max_new_tokens=MAX_NEW, stop_ids=tokenizer.stop_ids, sampling=sampling).tokens


def lose_runner(job: Job, tokens: list[int]) -> None:
    """What a takeover leaves behind when the first runner's server died after delivering `tokens`: its placements
    closed at them and their slots freed, the job running under epoch 1."""
    terms = Assignment.objects.filter(job=job).select_related("provider", "shard")
    pipeline = [
        {
            "hop": t.hop,
            "shard": t.shard.shard_id,
            "provider": t.provider_id,
            "provider_name": t.provider.name,
            "backend": t.provider.backend,
            "session": f"dead-{t.hop}",
            "channel": t.channel_name,
            "from_step": 0,
            "until_step": len(tokens),
            "ended": RUNNER_LOST,
        }
        for t in terms
    ]
    for term in terms:
        services.provider_release(provider_id=term.provider_id, channel_name=term.channel_name)
    text = model_files.model_tokenizer(job.model).decode(tokens)
    now = timezone.now()
    Job.objects.filter(pk=job.pk).update(
        state=Job.State.RUNNING,
        started_at=now - timedelta(seconds=60),
        tokens=tokens,
        text=text,
        pipeline=pipeline,
        runner_epoch=1,
        runner_seen_at=now,
        runner_lost_at=now - timedelta(seconds=30),
    )


@pytest.mark.parametrize("temperature", [0, Decimal("0.9")], ids=["greedy", "sampled"])
def test_a_job_taken_over_is_replayed_and_gives_the_tokens_of_an_uninterrupted_run(
    model: LanguageModel, temperature: Decimal
) -> None:
    expected = uninterrupted(model, SamplingParams(temperature=float(temperature), top_p=1.0, seed=7))
    assert len(expected) > DELIVERED + 2
    job = bid(model, temperature)
    token = carol_token()
    providers = [ScriptedProvider(token, f"p{i}", ns=500_000 + 100_000 * i) for i in range(2)]

    async def scenario() -> None:
        await place(providers)
        await sync_to_async(lose_runner)(job, expected[:DELIVERED])
        async with serving(providers):
            await run_job(job.pk, resume_epoch=0)  # a stale hand-off: the job is epoch 1's now
            assert (await sync_to_async(Job.objects.get)(pk=job.pk)).state == Job.State.RUNNING
            await run_job(job.pk, resume_epoch=1)

    async_to_sync(scenario)()
    done = Job.objects.get(pk=job.pk)
    assert done.state == Job.State.DONE, (done.error_code, done.error)
    assert done.tokens == expected
    assert done.timings["replayed_steps"] == DELIVERED and "replay_tokens_differing" not in done.timings
    # The old placements end where the lost runner stopped; the new ones take over from there.
    old = [e for e in done.pipeline if e["ended"] == RUNNER_LOST]
    new = [e for e in done.pipeline if e["ended"] == Job.State.DONE]
    assert len(old) == len(new) == 2
    assert all(e["until_step"] == DELIVERED for e in old) and all(e["from_step"] == DELIVERED for e in new)
    steps = len(done.tokens) + (1 if done.finish_reason == "stop" else 0)
    assert all(e["until_step"] == steps for e in new)
    # Every hop's provider replayed all the steps before going on; the buyer pays only for the steps it served after.
    assert sum(p.steps for p in providers) == 2 * steps
    lines = done.cost["lines"]
    assert sum(line["layer_tokens"] for line in lines) == 2 * 2 * (done.prompt_tokens + steps - 1)
    paid = sum(line["payment"] for line in lines)
    assert (done.cost["paid"], done.cost["refunded"]) == (paid, done.max_price - paid)
    assert ledger_selectors.balances_of(user=User.objects.get(username="alice")).escrow == 0
    # The replay is the platform's failure: it pays each new placement for the steps it redid, at the hop's price.
    replays = done.cost["platform_lines"]
    prices = dict(Assignment.objects.filter(job=done).values_list("hop", "unit_price"))
    assert sorted(line["hop"] for line in replays) == [0, 1]
    for line in replays:
        assert line["layer_tokens"] == 2 * (done.prompt_tokens + DELIVERED - 1)
        assert line["provider_receipt"] == line["payment"] == prices[line["hop"]] * line["layer_tokens"]
    assert done.cost["platform_paid"] == sum(line["payment"] for line in replays) > 0
    carol = ledger_selectors.balances_of(user=User.objects.get(username="carol"))
    assert carol.pending == paid - done.cost["fee"] + done.cost["platform_paid"]
    assert ledger_selectors.ledger_drift().ok


def test_a_runner_taken_over_while_alive_stops_without_ending_the_job_and_the_new_one_finishes_it(
    model: LanguageModel, settings: Any
) -> None:
    """A runner that was only slow (its lease lapsed, it lives on): the takeover fences it. It stops at its next step
    or lease renewal without storing, finishing or settling anything, and gives back no slot the takeover freed;
    the runner the job was handed to resumes it and finishes it with the uninterrupted run's tokens."""
    settings.RUNNER_HEARTBEAT_SECONDS = 0.05
    expected = uninterrupted(model, SamplingParams())
    job = bid(model)
    token = carol_token()
    release = asyncio.Event()  # bound to the loop that first waits on it: scenario()'s
    # Steps 0-3 give the old runner four tokens; step 4 waits for the takeover.
    providers = [HeldProvider(token, f"p{i}", ns=500_000 + 100_000 * i, hold_at=4, release=release) for i in range(2)]

    def take_over_now() -> list[tuple[int, int]]:
        """The lease as seen from a moment past it, with the providers heard from since (on a live server)."""
        later = timezone.now() + timedelta(seconds=settings.RUNNER_LEASE_SECONDS + 1)
        Provider.objects.update(last_seen=later)
        return services.jobs_orphaned(now=later)

    async def scenario() -> list[tuple[int, int]]:
        await place(providers)
        async with serving(providers):
            old = asyncio.ensure_future(run_job(job.pk))
            await until(sync_to_async(lambda: len(Job.objects.get(pk=job.pk).tokens) == 4), what="four tokens stored")
            taken = await sync_to_async(take_over_now)()
            release.set()
            await asyncio.wait_for(old, 10)  # it notices and stops
            stopped = await sync_to_async(Job.objects.get)(pk=job.pk)
            assert (stopped.state, stopped.runner_epoch, stopped.finished_at) == (Job.State.RUNNING, 1, None)
            assert not await sync_to_async(Provider.objects.filter(busy_slots__gt=0).exists)()
            await run_job(job.pk, resume_epoch=1)
            return taken

    assert async_to_sync(scenario)() == [(job.pk, 1)]
    done = Job.objects.get(pk=job.pk)
    assert done.state == Job.State.DONE, (done.error_code, done.error)
    assert done.tokens == expected
    delivered = done.timings["replayed_steps"]
    assert [e["ended"] for e in done.pipeline] == [RUNNER_LOST, RUNNER_LOST, "done", "done"]
    assert all(e["until_step"] == delivered for e in done.pipeline[:2])
    assert not Provider.objects.filter(busy_slots__gt=0).exists()
    assert ledger_selectors.ledger_drift().ok


def test_a_provider_failing_during_the_replay_is_replaced_and_the_buyer_still_pays_each_step_once(
    model: LanguageModel, settings: Any
) -> None:
    settings.STEP_DEADLINE_SECONDS = 1.5
    expected = uninterrupted(model, SamplingParams())
    job = bid(model)
    token = carol_token()
    providers = [
        ScriptedProvider(token, "p0", ns=500_000, stall_at=2),  # goes silent in the middle of the replay
        ScriptedProvider(token, "p1", ns=600_000),
        ScriptedProvider(token, "p2", ns=900_000),  # the spare
    ]

    async def scenario() -> None:
        await place(providers)
        await sync_to_async(lose_runner)(job, expected[:DELIVERED])
        async with serving(providers):
            await run_job(job.pk, resume_epoch=1)

    async_to_sync(scenario)()
    done = Job.objects.get(pk=job.pk)
    assert done.state == Job.State.DONE, (done.error_code, done.error)
    assert done.tokens == expected
    failed = next(e for e in done.pipeline if e["provider_name"] == "p0" and e["ended"] != RUNNER_LOST)
    assert failed["ended"].startswith("deadline") and failed["from_step"] == DELIVERED
    spare = next(e for e in done.pipeline if e["provider_name"] == "p2")
    assert spare["hop"] == failed["hop"] and spare["from_step"] == DELIVERED  # not from the step it failed at
    steps = len(done.tokens) + (1 if done.finish_reason == "stop" else 0)
    lines = done.cost["lines"]
    assert sum(line["layer_tokens"] for line in lines) == 2 * 2 * (done.prompt_tokens + steps - 1)  # each step once
    # The platform pays the replay that completed on the hop nobody failed; the spare's is a failover's, unpaid.
    assert [line["provider_name"] for line in done.cost["platform_lines"]] == ["p1"]
    assert ledger_selectors.ledger_drift().ok
