"""The benchmark challenge through the real ASGI application (consumer, channel layer, the tiny model's real shards
in storage): the server times the answer itself and checks it against its own run of the shard. Providers that lie
in each way the check covers: a quick garbage answer, a 1 ns claim, an answer without a challenge, a second
benchmark_ready, another shard's answer, an oversized one, a replayed one, and one that never comes."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.files.storage import default_storage
from django.test import Client

from config.asgi import application
from inference import challenge
from inference.runtime import ShardRuntime
from inference.tiny import write_tiny_gguf
from market import services
from market.models import Provider
from transport import protocol as p

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = {"protocol": 1, "name": "box", "kind": "headless", "backend": "cpu", "slots": 1, "memory_bytes": 0}
WAIT = 10  # seconds for any one message; the server's reference run comes before its verdict


def run_async(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        async_to_sync(test)(*args, **kwargs)

    return wrapper


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def token(tmp_path: Path, settings: Any, tiny_gguf: Path) -> str:
    """The tiny model imported (its middle shard 1-3 is the benchmark shard) and a provider account's token."""
    settings.MEDIA_ROOT = tmp_path / "media"
    services.model_import(source=str(tiny_gguf), plan="0-1,1-3,3-4", name="tiny")
    return services.account_open(username="carol")[1]


class Connection:
    """One provider connection, driven step by step."""

    def __init__(self, token: str, name: str = "box") -> None:
        headers = [(b"origin", b"http://127.0.0.1"), (b"authorization", f"Token {token}".encode())]
        self.ws = WebsocketCommunicator(application, "/ws/provider/", headers=headers)
        self.name = name
        self.shard: dict[str, Any] = {}

    async def hello(self) -> None:
        assert (await self.ws.connect(timeout=WAIT))[0]
        await self.ws.send_json_to({"type": "hello", **HELLO, "name": self.name})
        welcome = await self.ws.receive_json_from(timeout=WAIT)
        assert welcome["type"] == "welcome" and welcome["benchmark"]["id"] == "tiny:f32:1-3", welcome
        self.shard = welcome["benchmark"]

    async def ready(self) -> dict[str, Any]:
        """benchmark_ready, and the challenge it brings."""
        await self.ws.send_json_to({"type": "benchmark_ready", "shard_id": self.shard["id"]})
        found: dict[str, Any] = await self.ws.receive_json_from(timeout=WAIT)
        return found

    async def answer(self, answer: str, *, ns: int = 1, shard_id: str | None = None) -> dict[str, Any]:
        shard = shard_id or self.shard["id"]
        await self.ws.send_json_to({"type": "benchmark", "shard_id": shard, "ns_per_layer_token": ns, "answer": answer})
        reply: dict[str, Any] = await self.ws.receive_json_from(timeout=WAIT)
        return reply

    def honest(self, found: dict[str, Any]) -> str:
        """The shard's real output for the challenge, from the provider's own copy of the file."""
        runtime = ShardRuntime(default_storage.path(f"shards/{self.shard['sha256']}.onnx"))
        return challenge.encode_answer(challenge.run(runtime, p.challenge_fields(found)).answer)

    async def closed_with(self) -> int:
        message = await self.ws.receive_output(timeout=WAIT)
        assert message["type"] == "websocket.close", message
        return int(message["code"])


async def row(name: str = "box") -> Provider:
    provider: Provider = await database_sync_to_async(Provider.objects.get)(name=name)
    return provider


def garbage(shard: dict[str, Any]) -> str:
    noise = np.random.default_rng(1).standard_normal(int(shard["hidden"])).astype(np.float32)
    return challenge.encode_answer(noise)


@run_async
async def test_an_honest_answer_with_a_one_ns_claim_gets_the_speed_the_server_measured(token: str) -> None:
    provider = Connection(token)
    await provider.hello()
    found = await provider.ready()
    assert found["type"] == p.BENCHMARK_CHALLENGE and found["shard_id"] == "tiny:f32:1-3"
    assert (found["prompt"], found["steps"]) == (challenge.PROMPT_POSITIONS, challenge.DECODE_STEPS)
    assert 0 <= found["seed"] < 2**53
    confirmed = await provider.answer(provider.honest(found), ns=1)  # claims 1 ns: the cheapest ask there is
    assert confirmed["type"] == p.BENCHMARKED, confirmed
    measured = confirmed["ns_per_layer_token"]
    assert measured > 1000 and confirmed["claimed_ns_per_layer_token"] == 1
    stored = await row()
    assert (stored.ns_per_layer_token, stored.claimed_ns_per_layer_token) == (measured, 1)
    assert (stored.reliability_permille, stored.failures) == (1000, 0)
    listed = await database_sync_to_async(_listed)(token)
    assert (listed["ns_per_layer_token"], listed["claimed_ns_per_layer_token"]) == (measured, 1)

    # One challenge per connection: a second benchmark_ready is refused and changes nothing.
    await provider.ws.send_json_to({"type": "benchmark_ready", "shard_id": provider.shard["id"]})
    assert (await provider.ws.receive_json_from(timeout=WAIT))["code"] == p.DUPLICATE_BENCHMARK
    assert (await row()).ns_per_layer_token == measured
    await provider.ws.disconnect()


def _listed(token: str) -> dict[str, Any]:
    response = Client().get("/api/providers/", HTTP_AUTHORIZATION=f"Token {token}")
    return dict(next(entry for entry in response.json() if entry["name"] == "box"))


@run_async
async def test_a_quick_garbage_answer_is_not_benchmarked_and_closes_the_connection(token: str) -> None:
    provider = Connection(token)
    await provider.hello()
    await provider.ready()
    refused = await provider.answer(garbage(provider.shard), ns=1)  # at once, without running anything
    assert refused["type"] == "error" and refused["code"] == p.BENCHMARK_FAILED, refused
    assert "is not tiny:f32:1-3's output for this challenge" in refused["message"]
    assert await provider.closed_with() == p.CLOSE_PROTOCOL
    stored = await row()
    assert stored.ns_per_layer_token is None  # never placed: the book and the quotes hold benchmarked providers only
    assert (stored.reliability_permille, stored.failures) == (900, 1)
    await provider.ws.disconnect()


async def _refused(token: str, answer: Callable[[Connection, dict[str, Any]], Awaitable[dict[str, Any]]]) -> str:
    """The error a provider gets for its answer to a fresh challenge; the connection is closed after it."""
    provider = Connection(token)
    await provider.hello()
    refused = await answer(provider, await provider.ready())
    assert refused["code"] == p.BENCHMARK_FAILED, refused
    assert await provider.closed_with() == p.CLOSE_PROTOCOL
    assert (await row()).ns_per_layer_token is None
    await provider.ws.disconnect()
    return str(refused["message"])


@run_async
async def test_an_answer_for_another_shard_of_another_size_or_too_big_fails(token: str) -> None:
    async def other_shard(provider: Connection, found: dict[str, Any]) -> dict[str, Any]:
        return await provider.answer(provider.honest(found), shard_id="tiny:f32:0-1")

    async def short(provider: Connection, found: dict[str, Any]) -> dict[str, Any]:
        return await provider.answer(challenge.encode_answer(np.zeros(3, dtype=np.float32)))

    async def huge(provider: Connection, found: dict[str, Any]) -> dict[str, Any]:
        return await provider.answer("A" * 4_000_000)  # refused by its length, never decoded

    async def not_base64(provider: Connection, found: dict[str, Any]) -> dict[str, Any]:
        return await provider.answer("!" * len(provider.honest(found)))

    assert "the challenge was on tiny:f32:1-3, not on 'tiny:f32:0-1'" in await _refused(token, other_shard)
    for lie in (short, huge, not_base64):
        assert "must be base64 of the last step's output: 64 float32 values" in await _refused(token, lie)
    assert (await row()).failures == 4


@run_async
async def test_a_benchmark_without_a_challenge_fails(token: str) -> None:
    provider = Connection(token)
    await provider.hello()
    refused = await provider.answer(garbage(provider.shard))
    assert refused["code"] == p.BENCHMARK_FAILED and "no challenge is open" in refused["message"], refused
    assert await provider.closed_with() == p.CLOSE_PROTOCOL
    assert (await row()).reliability_permille == 900
    await provider.ws.disconnect()


@run_async
async def test_a_ready_for_another_shard_fails_and_a_malformed_answer_changes_nothing(token: str) -> None:
    provider = Connection(token)
    await provider.hello()
    found = await provider.ready()
    # A malformed benchmark is a bad message: the challenge stays open, the clock running.
    await provider.ws.send_json_to({"type": "benchmark", "shard_id": provider.shard["id"], "ns_per_layer_token": 5})
    assert (await provider.ws.receive_json_from(timeout=WAIT))["code"] == p.BAD_MESSAGE
    assert (await provider.answer(provider.honest(found)))["type"] == p.BENCHMARKED
    await provider.ws.disconnect()

    other = Connection(token, name="other")
    await other.hello()
    await other.ws.send_json_to({"type": "benchmark_ready", "shard_id": "tiny:f32:0-1"})
    refused = await other.ws.receive_json_from(timeout=WAIT)
    assert refused["code"] == p.BENCHMARK_FAILED and "the benchmark shard is tiny:f32:1-3" in refused["message"]
    assert await other.closed_with() == p.CLOSE_PROTOCOL
    await other.ws.disconnect()


@run_async
async def test_a_replayed_answer_fails_because_every_connection_gets_a_fresh_seed(token: str) -> None:
    first = Connection(token)
    await first.hello()
    found = await first.ready()
    answer = first.honest(found)
    assert (await first.answer(answer))["type"] == p.BENCHMARKED
    await first.ws.disconnect()

    again = Connection(token)  # the same provider reconnects: unbenchmarked until it answers its own challenge
    await again.hello()
    assert (await row()).ns_per_layer_token is None
    fresh = await again.ready()
    assert fresh["seed"] != found["seed"]
    refused = await again.answer(answer)
    assert refused["code"] == p.BENCHMARK_FAILED, refused
    await again.ws.disconnect()


@run_async
async def test_no_answer_within_the_deadline_fails(token: str, settings: Any) -> None:
    settings.BENCHMARK_DEADLINE_SECONDS = 0.3
    provider = Connection(token)
    await provider.hello()
    found = await provider.ready()
    refused = await provider.ws.receive_json_from(timeout=WAIT)
    assert refused["code"] == p.BENCHMARK_FAILED and "within 0.3 s" in refused["message"], refused
    assert await provider.closed_with() == p.CLOSE_PROTOCOL
    assert (await row()).failures == 1
    late = await provider.answer(provider.honest(found))  # the right answer, too late: no challenge is open now
    assert late["code"] == p.BENCHMARK_FAILED and "no challenge is open" in late["message"]
    await provider.ws.disconnect()


@run_async
async def test_a_benchmark_ready_without_a_model_is_a_bad_message() -> None:
    token = (await database_sync_to_async(services.account_open)(username="dave"))[1]
    headers = [(b"origin", b"http://127.0.0.1"), (b"authorization", f"Token {token}".encode())]
    ws = WebsocketCommunicator(application, "/ws/provider/", headers=headers)
    assert (await ws.connect(timeout=WAIT))[0]
    await ws.send_json_to({"type": "hello", **HELLO})
    assert (await ws.receive_json_from(timeout=WAIT))["benchmark"] is None
    await ws.send_json_to({"type": "benchmark_ready", "shard_id": "x"})
    assert (await ws.receive_json_from(timeout=WAIT))["code"] == p.BAD_MESSAGE
    await ws.disconnect()
