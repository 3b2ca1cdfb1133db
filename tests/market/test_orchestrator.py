"""The orchestrator against the real provider consumer and channel layer, with scripted providers that run the tiny
model's real shards. Each job is a real bid, placed by a real auction round: exact output; a provider that misses
its deadline is replaced, the job's output does not change, and each is paid for the steps it served; with no one
left the job fails with its reason and is refunded; a job whose provider left before it started goes back into
the book. (tests/e2e does the same with real processes.)"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.core.files.storage import default_storage

from config.asgi import application
from inference import challenge, wire
from inference.generate import SamplingParams, generate
from inference.runtime import ShardRuntime
from ledger import selectors as ledger_selectors
from market import model_files, selectors, services
from market.models import Assignment, Job, LanguageModel, Provider
from market.orchestrator import run_job
from market.scheduling import job_launch
from tests.waiting import until
from transport import protocol as p

pytestmark = pytest.mark.django_db(transaction=True)

MAX_NEW = 12
GRANT = 1_000_000  # settings.SIGNUP_GRANT


@pytest.fixture(autouse=True)
def short_deadline(settings: Any) -> None:
    settings.STEP_DEADLINE_SECONDS = 1.5


class ScriptedProvider:
    """A provider client that runs real shards, and goes silent from step `stall_at` on if told to."""

    def __init__(
        self,
        token: str,
        name: str,
        *,
        ns: int = 1_000_000,
        stall_at: int | None = None,
        lose_once: int | None = None,
        argmax: bool = True,
    ) -> None:
        headers = [(b"origin", b"http://127.0.0.1"), (b"authorization", f"Token {token}".encode())]
        self.ws = WebsocketCommunicator(application, "/ws/provider/", headers=headers)
        self.name = name
        self.ns = ns  # its speed once benchmarked: the auction's asks follow it, so the fastest providers win the hops
        self.argmax = argmax  # answers a greedy job's head steps with the argmax, as the agent does
        self.argmax_sessions: set[uuid.UUID] = set()
        self.stall_at = stall_at
        self.lose_once = lose_once  # the answer to this step is "lost" once; asked again, the kept answer is sent
        self.kept: bytes | None = None
        self.sessions: dict[uuid.UUID, ShardRuntime] = {}
        self.steps = 0

    async def start(self) -> None:
        assert (await self.ws.connect(timeout=5))[0]
        hello = {"protocol": 1, "name": self.name, "kind": "headless", "backend": "cpu", "slots": 1, "memory_bytes": 0}
        await self.ws.send_json_to({"type": "hello", **hello})
        welcome = await self.ws.receive_json_from(timeout=5)
        assert welcome["type"] == "welcome"
        await self._benchmark(welcome["benchmark"])

    async def _benchmark(self, shard: dict[str, Any]) -> None:
        """Answer the server's challenge honestly; then the provider gets the speed this test gives it (the server's
        measurement of providers in one process says nothing about which should win)."""
        await self.ws.send_json_to({"type": "benchmark_ready", "shard_id": shard["id"]})
        found = p.challenge_fields(await self.ws.receive_json_from(timeout=5))
        runtime = ShardRuntime(default_storage.path(f"shards/{shard['sha256']}.onnx"))
        answer = challenge.encode_answer(challenge.run(runtime, found).answer)
        await self.ws.send_json_to(
            {"type": "benchmark", "shard_id": shard["id"], "ns_per_layer_token": 1, "answer": answer}
        )
        assert (await self.ws.receive_json_from(timeout=10))["type"] == "benchmarked"
        await sync_to_async(Provider.objects.filter(name=self.name).update)(ns_per_layer_token=self.ns)

    async def serve(self) -> None:
        while True:
            message = await self.ws.receive_output(timeout=60)
            if message["type"] != "websocket.send":
                return
            if message.get("bytes") is not None:
                await self._step(message["bytes"])
            else:
                await self._control(message["text"])

    async def _control(self, text: str) -> None:
        import json

        message = json.loads(text)
        if message["type"] == "open_session":
            path = default_storage.path(f"shards/{message['shard']['sha256']}.onnx")
            self.sessions[uuid.UUID(message["session"])] = runtime = ShardRuntime(path)
            runtime.open(message["session"])
            if self.argmax and runtime.spec.has_head and message.get("head_output") == "argmax":
                self.argmax_sessions.add(uuid.UUID(message["session"]))
            await self.ws.send_json_to({"type": "session_opened", "session": message["session"]})

    async def _step(self, data: bytes) -> None:
        frame = wire.decode(data)
        if self.stall_at is not None and frame.step >= self.stall_at:
            return
        if self.kept is not None and frame.step == self.lose_once:
            await self.ws.send_to(bytes_data=self.kept)
            return
        runtime = self.sessions[frame.session]
        out = runtime.step(str(frame.session), frame.tensor).output
        self.steps += 1
        if frame.session in self.argmax_sessions:
            tensor = np.array([[np.argmax(out[0])]], dtype=np.int64)
        else:
            tensor = out if runtime.spec.has_head else out.astype("float16")
        answer = wire.encode(wire.MessageType.STEP_OUTPUT, frame.session, frame.step, frame.shard, tensor)
        if frame.step == self.lose_once:
            self.kept = answer
            return
        await self.ws.send_to(bytes_data=answer)


@contextlib.asynccontextmanager
async def serving(providers: Sequence[ScriptedProvider]) -> AsyncIterator[None]:
    """The providers answer their sessions' steps until the block ends; then they disconnect."""
    tasks = [asyncio.ensure_future(provider.serve()) for provider in providers]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for provider in providers:
            await provider.ws.disconnect()


def expected_tokens(model: LanguageModel, messages: list[dict[str, str]]) -> list[int]:
    chain = model_files.local_chain(selectors.shard_chain(model=model, plan="0-2,2-4"))
    tokenizer = model_files.model_tokenizer(model)
    ids = tokenizer.encode_chat(messages)
    return generate(chain, ids, max_new_tokens=MAX_NEW, stop_ids=tokenizer.stop_ids, sampling=SamplingParams()).tokens


async def run_with(providers: list[ScriptedProvider], job_id: int, *, leave_before_start: int = 0) -> Job:
    """Connect the providers, clear the market (one round, which must place the job), and run the job; the first
    `leave_before_start` providers disconnect between the round and the runner's start."""
    for provider in providers:
        await provider.start()  # benchmarked when it returns: the book holds benchmarked providers only
    round_ = await sync_to_async(services.clear_market)()
    assert round_ is not None and (round_.n_jobs, round_.n_placed) == (1, 1)
    leaving = [provider.name for provider in providers[:leave_before_start]]
    for provider in providers[:leave_before_start]:
        await provider.ws.disconnect()
    await until(
        sync_to_async(lambda: not Provider.objects.filter(name__in=leaving, state=Provider.State.ONLINE).exists()),
        what=f"{leaving} offline",
    )
    async with serving(providers[leave_before_start:]):
        await run_job(job_id)
    job: Job = await sync_to_async(Job.objects.get)(pk=job_id)
    return job


@pytest.fixture(autouse=True)
def launches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Jobs a round hands to a runner: recorded, not started (each test runs its job itself)."""
    calls: list[int] = []
    monkeypatch.setattr("market.scheduling.job_launch", calls.append)
    monkeypatch.setattr("market.scheduling.auction_nudge", lambda: None)  # each test clears the market itself
    return calls


def queued_job(model: LanguageModel, messages: list[dict[str, str]]) -> tuple[Job, str]:
    """A bid from alice at the default price, and the token of carol, who runs the providers."""
    buyer = services.account_open(username="alice")[0]
    job = services.job_create(
        buyer=buyer,
        model=model,
        messages=messages,
        max_new_tokens=MAX_NEW,
        temperature=Decimal(0),
        top_p=Decimal(1),
        seed=None,
    )
    return job, services.account_open(username="carol")[1]


def steps_run(job: Job) -> int:
    """Steps through the whole pipeline: one per token, plus the one whose token was the stop token."""
    return len(job.tokens) + (1 if job.finish_reason == "stop" else 0)


def test_the_pipeline_gives_the_chain_tokens_and_a_provider_past_its_deadline_is_replaced(
    model: LanguageModel, settings: Any
) -> None:
    messages = [{"role": "user", "content": "hello there"}]
    job, token = queued_job(model, messages)
    providers = [
        ScriptedProvider(token, "p0", ns=500_000, stall_at=3),
        ScriptedProvider(token, "p1", ns=800_000),
        ScriptedProvider(token, "p2", ns=1_000_000),  # the spare: the slowest, so the round leaves it free
    ]
    done = async_to_sync(run_with)(providers, job.pk)
    assert done.state == Job.State.DONE, (done.error_code, done.error)
    assert done.tokens == expected_tokens(model, messages)
    stalled = [hop for hop in done.pipeline if hop["provider_name"] == "p0"]
    assert len(stalled) == 1 and stalled[0]["ended"].startswith("deadline") and stalled[0]["until_step"] == 3
    replacement = next(h for h in done.pipeline if h["hop"] == stalled[0]["hop"] and h["provider_name"] != "p0")
    assert replacement["provider_name"] == "p2" and replacement["from_step"] == 3 and replacement["ended"] == "done"
    assert replacement["until_step"] == steps_run(done)
    assert providers[0].steps == 3
    # The market timed the decode steps of the hop one provider served throughout (p1), not the replaced hop's.
    observed = dict(Provider.objects.values_list("name", "observed_steps"))
    # Its decode steps, less the warm-up (the prompt's step is not a decode step).
    assert observed["p1"] == steps_run(done) - 1 - settings.SPEED_WARMUP_STEPS and observed["p0"] == observed["p2"] == 0
    assert Provider.objects.get(name="p1").observed_ns_per_layer_token
    # Settlement: p0 is paid for steps 0-2 (the prompt and two tokens), p2 for the rest of that hop, at the price
    # the hop cleared; the buyer pays no more than without the failure, and gets the rest of the escrow back.
    assert done.settled_at is not None
    lines = {(line["hop"], line["provider_name"]): line for line in done.cost["lines"]}
    hop = stalled[0]["hop"]
    price = Assignment.objects.get(job=done, hop=hop).unit_price
    assert lines[hop, "p0"]["layer_tokens"] == 2 * (done.prompt_tokens + 2)
    assert lines[hop, "p2"]["layer_tokens"] == 2 * (steps_run(done) - 3)
    assert lines[hop, "p0"]["unit_price"] == lines[hop, "p2"]["unit_price"] == price
    other = 1 - hop
    assert lines[other, "p1"]["layer_tokens"] == 2 * (done.prompt_tokens + steps_run(done) - 1)
    paid = sum(line["payment"] for line in lines.values())
    fee = sum(line["fee"] for line in lines.values())
    assert (done.cost["paid"], done.cost["fee"], done.cost["refunded"]) == (paid, fee, done.max_price - paid)
    alice, carol = User.objects.get(username="alice"), User.objects.get(username="carol")
    assert ledger_selectors.balances_of(user=alice).available == GRANT - paid
    assert ledger_selectors.balances_of(user=alice).escrow == 0
    assert ledger_selectors.balances_of(user=carol).pending == paid - fee
    assert ledger_selectors.ledger_drift().ok


def test_on_the_full_profile_the_runner_starts_where_the_first_provider_is_connected(
    model: LanguageModel, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORCHESTRATOR=celery (rounds in a worker) with JOB_RUNNERS=server: the round's launch reaches the consumer of
    the first hop's connection through the channel layer, and that consumer's process runs the job; nothing else
    starts it here."""
    settings.ORCHESTRATOR, settings.JOB_RUNNERS = "celery", "server"
    monkeypatch.setattr("market.scheduling.job_launch", job_launch)
    messages = [{"role": "user", "content": "hello there"}]
    job, token = queued_job(model, messages)
    providers = [ScriptedProvider(token, f"p{i}", ns=500_000 + 100_000 * i) for i in range(2)]

    async def scenario() -> Job:
        for provider in providers:
            await provider.start()  # benchmarked when it returns: the book holds benchmarked providers only
        async with serving(providers):
            round_ = await sync_to_async(services.clear_market)()
            assert round_ is not None and round_.n_placed == 1

            def settled() -> Job | None:
                job_now = Job.objects.get(pk=job.pk)
                return job_now if job_now.state in Job.FINAL_STATES and job_now.settled_at is not None else None

            return await until(sync_to_async(settled), what=f"job {job.pk} ended and settled")

    done = async_to_sync(scenario)()
    assert done.state == Job.State.DONE, (done.error_code, done.error)
    assert done.tokens == expected_tokens(model, messages)
    first = Assignment.objects.get(job=done, hop=0)
    assert done.pipeline[0]["provider"] == first.provider_id


def test_a_head_provider_that_answers_with_logits_gives_the_same_tokens(model: LanguageModel) -> None:
    """Greedy jobs ask the head for its argmax only; a provider that sends the whole logits instead is still
    understood, and the runner's own argmax picks the same tokens."""
    messages = [{"role": "user", "content": "hello there"}]
    job, token = queued_job(model, messages)
    providers = [ScriptedProvider(token, f"p{i}", argmax=False) for i in range(2)]
    done = async_to_sync(run_with)(providers, job.pk)
    assert done.state == Job.State.DONE, (done.error_code, done.error)
    assert done.tokens == expected_tokens(model, messages)


def test_without_a_spare_the_job_fails_with_the_reason(model: LanguageModel) -> None:
    messages = [{"role": "user", "content": "hello there"}]
    job, token = queued_job(model, messages)
    providers = [ScriptedProvider(token, "p0", stall_at=2), ScriptedProvider(token, "p1")]
    failed = async_to_sync(run_with)(providers, job.pk)
    assert (failed.state, failed.error_code) == (Job.State.FAILED, "no_replacement")
    assert "provider p0" in failed.error and "deadline" in failed.error
    assert failed.tokens == expected_tokens(model, messages)[: len(failed.tokens)] and len(failed.tokens) == 2
    # A failed job pays for the steps that reached the buyer (two tokens: steps 0 and 1 through both hops), not the
    # step in flight; the rest of its escrow comes back, and it holds no provider's slot.
    assert [(line["hop"], line["until_step"]) for line in failed.cost["lines"]] == [(0, 2), (1, 2)]
    assert failed.cost["paid"] == sum(line["payment"] for line in failed.cost["lines"]) > 0
    assert failed.cost["refunded"] == failed.max_price - failed.cost["paid"]
    assert ledger_selectors.balances_of(user=failed.buyer).available == GRANT - failed.cost["paid"]
    assert not Provider.objects.filter(busy_slots__gt=0).exists()


def test_a_job_whose_provider_left_before_it_started_goes_back_into_the_book(model: LanguageModel) -> None:
    job, token = queued_job(model, [{"role": "user", "content": "hello there"}])
    providers = [ScriptedProvider(token, "p0", ns=500_000), ScriptedProvider(token, "p1", ns=800_000)]
    back = async_to_sync(run_with)(providers, job.pk, leave_before_start=1)
    assert (back.state, back.priority, back.started_at, back.tokens) == (Job.State.QUEUED, 1, None, [])
    assert "no provider is free" in back.error
    assert not Provider.objects.filter(busy_slots__gt=0).exists()
    assert back.settled_at is None  # no extra charge: the whole bid stays in escrow for the next round
    assert ledger_selectors.escrow_held(user=back.buyer, job_ref=f"job-{back.pk}") == back.max_price


def test_a_lost_answer_is_asked_for_again_and_the_provider_keeps_its_place(model: LanguageModel) -> None:
    messages = [{"role": "user", "content": "hello there"}]
    job, token = queued_job(model, messages)
    providers = [
        ScriptedProvider(token, "p0"),
        ScriptedProvider(token, "p1", lose_once=4),
        ScriptedProvider(token, "p2"),
    ]
    done = async_to_sync(run_with)(providers, job.pk)
    assert done.state == Job.State.DONE, (done.error_code, done.error)
    assert done.tokens == expected_tokens(model, messages)
    assert [hop["ended"] for hop in done.pipeline] == ["done", "done"], "the provider was replaced"
    assert providers[1].kept is not None and providers[1].steps == len(done.tokens)
