"""/ws/provider/ through the real ASGI application (token auth, origin check, consumer, channel layer): who may
connect, the hello, what every malformed message costs (an error, never the connection), and the relay of a
session between a job runner and its provider. Runs on the in-memory channel layer or Redis, whichever is set."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.authtoken.models import Token

from config.asgi import application
from inference import wire
from market.models import Job, LanguageModel, Provider, Shard
from transport import protocol as p
from transport import relay
from transport.messages import ProviderClose, ProviderStep

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = {"protocol": 1, "name": "box", "kind": "headless", "backend": "cpu", "slots": 3, "memory_bytes": 1 << 30}
SHARD = {"id": "tiny:f32:1-3", "sha256": "ab" * 32, "url": "/shards/x/", "has_head": False, "hidden": 8, "vocab": 10}
WAIT = 5  # seconds for any one message; Redis is a little slower than memory


def run_async(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test on its own event loop; database_sync_to_async calls come back to the test's thread."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        async_to_sync(test)(*args, **kwargs)

    return wrapper


@pytest.fixture
def alice_token() -> str:
    return str(Token.objects.create(user=User.objects.create_user("alice")).key)


def client(token: str | None = None, *, path: str = "/ws/provider/", origin: bool = True) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://127.0.0.1")] if origin else []
    if token is not None:
        headers.append((b"authorization", f"Token {token}".encode()))
    return WebsocketCommunicator(application, path, headers=headers)


async def say_hello(ws: WebsocketCommunicator, name: str = "box") -> dict[str, Any]:
    connected, _ = await ws.connect(timeout=WAIT)
    assert connected
    await ws.send_json_to({"type": "hello", **HELLO, "name": name})
    welcome: dict[str, Any] = await ws.receive_json_from(timeout=WAIT)
    assert welcome["type"] == "welcome", welcome
    return welcome


async def reply_to(ws: WebsocketCommunicator, message: str | bytes) -> dict[str, Any]:
    await (ws.send_to(bytes_data=message) if isinstance(message, bytes) else ws.send_to(text_data=message))
    reply: dict[str, Any] = await ws.receive_json_from(timeout=WAIT)
    return reply


def output(session: uuid.UUID, step: int, tensor: np.ndarray) -> bytes:
    return wire.encode(wire.MessageType.STEP_OUTPUT, session, step, 1, tensor)


async def provider_row() -> Provider:
    provider: Provider = await database_sync_to_async(Provider.objects.select_related("user").get)()
    return provider


@pytest.mark.parametrize("token", [None, "not-a-token"], ids=["no-token", "bad-token"])
@run_async
async def test_without_a_valid_token_the_provider_is_told_and_closed_with_4401(token: str | None) -> None:
    ws = client(token)
    assert (await ws.connect(timeout=WAIT))[0]
    error = await ws.receive_json_from(timeout=WAIT)
    assert (error["type"], error["code"]) == ("error", "unauthorized")
    assert await ws.receive_output(timeout=WAIT) == {"type": "websocket.close", "code": p.CLOSE_UNAUTHORIZED}
    await ws.disconnect()


@run_async
async def test_a_connection_without_an_allowed_origin_is_refused(alice_token: str) -> None:
    connected, _ = await client(alice_token, origin=False).connect(timeout=WAIT)
    assert not connected


@run_async
async def test_hello_is_welcomed_and_the_provider_is_online_until_it_disconnects(alice_token: str) -> None:
    ws = client(path=f"/ws/provider/?token={alice_token}")  # the browser's way: no headers on a WebSocket
    welcome = await say_hello(ws)
    provider = await provider_row()
    assert welcome == {
        "type": "welcome",
        "provider_id": provider.pk,
        "protocol": 1,
        "benchmark": None,
        "max_frame_bytes": wire.MAX_FRAME_BYTES,
        "heartbeat_seconds": 15.0,
        "states_keep_seconds": welcome["states_keep_seconds"],
    }
    assert welcome["states_keep_seconds"] >= settings.CHALLENGE_WINDOW_SECONDS  # states outlive the window
    assert (provider.state, provider.name, provider.slots, provider.busy_slots) == ("online", "box", 3, 0)
    assert (provider.kind, provider.backend, provider.memory_bytes) == ("headless", "cpu", 1 << 30)
    assert provider.channel_name and provider.user.username == "alice"
    await ws.disconnect()
    provider = await provider_row()
    assert (provider.state, provider.channel_name) == ("offline", "")


@run_async
async def test_a_hello_may_post_the_providers_own_ask(alice_token: str) -> None:
    ws = client(alice_token)
    connected, _ = await ws.connect(timeout=WAIT)
    assert connected
    await ws.send_json_to({"type": "hello", **HELLO, "ask": 0})
    assert (await ws.receive_json_from(timeout=WAIT))["code"] == "bad_message"  # an ask is at least 1
    await ws.send_json_to({"type": "hello", **HELLO, "ask": 40})
    assert (await ws.receive_json_from(timeout=WAIT))["type"] == "welcome"
    assert (await provider_row()).posted_ask == 40
    await ws.disconnect()


@run_async
async def test_a_hello_claiming_a_petabyte_is_refused_and_stores_nothing(alice_token: str) -> None:
    ws = client(alice_token)
    connected, _ = await ws.connect()
    assert connected
    await ws.send_json_to({"type": "hello", **HELLO, "memory_bytes": 10**15})
    refused = await ws.receive_json_from(timeout=WAIT)
    assert refused["type"] == "error" and refused["code"] == "bad_message", refused
    assert '"memory_bytes" must be between 0 and 1099511627776' in refused["message"]
    assert await database_sync_to_async(Provider.objects.count)() == 0
    await ws.send_json_to({"type": "hello", **HELLO})  # the connection stays usable for a hello within bounds
    assert (await ws.receive_json_from(timeout=WAIT))["type"] == "welcome"
    await ws.disconnect()


@run_async
async def test_a_second_hello_on_one_connection_is_refused_and_no_second_provider_appears(alice_token: str) -> None:
    ws = client(alice_token)
    await say_hello(ws)
    await ws.send_json_to({"type": "hello", **HELLO, "name": "another"})
    refused = await ws.receive_json_from(timeout=WAIT)
    assert refused["type"] == "error" and refused["code"] == "duplicate_hello", refused
    assert await database_sync_to_async(Provider.objects.count)() == 1
    await ws.disconnect()
    # The socket is gone: nothing it announced is still online.
    online = await database_sync_to_async(Provider.objects.filter(state="online").count)()
    assert online == 0


def add_model() -> None:
    config = {"n_layers": 4, "hidden": 8, "vocab": 10, "max_context": 64}
    model = LanguageModel.objects.create(name="tiny", source_sha256="0" * 64, config=config, tokenizer_sha256="0")
    for first, end in [(0, 1), (1, 3), (3, 4)]:
        Shard.objects.create(
            model=model, shard_id=f"tiny:f32:{first}-{end}", first_layer=first, end_layer=end, sha256=f"{first}" * 64,
            size_bytes=100 * end, file=f"shards/{first}.onnx",
        )  # fmt: skip


@run_async
async def test_the_welcome_names_the_benchmark_shard_and_a_self_timed_figure_is_not_taken(alice_token: str) -> None:
    await database_sync_to_async(add_model)()
    ws = client(alice_token)
    bench = (await say_hello(ws))["benchmark"]
    assert bench == {
        "id": "tiny:f32:1-3", "sha256": "1" * 64, "url": f"/shards/{'1' * 64}/", "size": 300, "first_layer": 1,
        "end_layer": 3, "has_embedding": False, "has_head": False, "hidden": 8, "vocab": 10,
    }  # fmt: skip
    # The old form, a figure the provider timed on inputs of its own: no answer to check, so nothing is stored (the
    # challenge that a benchmark answers is tested in test_benchmark.py).
    refused = await reply_to(ws, p.dumps(p.BENCHMARK, ns_per_layer_token=12345, shard_id=bench["id"]))
    assert refused["code"] == p.BAD_MESSAGE and '"answer"' in refused["message"]
    assert (await provider_row()).ns_per_layer_token is None
    await ws.disconnect()


@run_async
async def test_nothing_but_hello_is_accepted_before_hello(alice_token: str) -> None:
    ws = client(alice_token)
    assert (await ws.connect(timeout=WAIT))[0]
    frame = output(uuid.uuid4(), 0, np.zeros((1, 1, 8), dtype=np.float16))
    assert await reply_to(ws, frame) == {
        "type": "error",
        "code": p.BAD_MESSAGE,
        "message": "say hello before sending frames",
    }
    assert await reply_to(ws, p.dumps(p.HEARTBEAT)) == {
        "type": "error",
        "code": p.BAD_MESSAGE,
        "message": "say hello first",
    }
    assert not await database_sync_to_async(Provider.objects.exists)()
    await say_hello(ws)  # still open, and hello works
    await ws.disconnect()


def malformed() -> list[tuple[str, str | bytes, str]]:
    good = output(uuid.uuid4(), 0, np.zeros((1, 1, 8), dtype=np.float16))
    step_input = wire.encode(wire.MessageType.STEP_INPUT, uuid.uuid4(), 0, 1, np.zeros((1, 1, 8), dtype=np.float16))
    return [
        ("truncated header", good[:20], p.BAD_FRAME),
        ("bad magic", b"XXXX" + good[4:], p.BAD_FRAME),
        ("wrong version", good[:4] + b"\x02" + good[5:], p.BAD_FRAME),
        ("unknown dtype", good[:6] + b"\x09" + good[7:], p.BAD_FRAME),
        ("payload shorter than its shape", good[:-2], p.BAD_FRAME),
        ("oversize", good + bytes(wire.MAX_FRAME_BYTES), p.BAD_FRAME),
        ("a step input from a provider", step_input, p.BAD_FRAME),
        ("a session nobody opened", good, p.UNKNOWN_SESSION),
        ("not JSON", "{nope", p.BAD_MESSAGE),
        ("not an object", "[1]", p.BAD_MESSAGE),
        ("unknown type", p.dumps("dance"), p.BAD_MESSAGE),
        ("wrong field type", p.dumps(p.BENCHMARK, ns_per_layer_token="fast"), p.BAD_MESSAGE),
        ("benchmark out of range", p.dumps(p.BENCHMARK, ns_per_layer_token=0), p.BAD_MESSAGE),
        ("session id that is not a UUID", p.dumps(p.SESSION_OPENED, session="x"), p.BAD_MESSAGE),
        ("session_opened for no session", p.dumps(p.SESSION_OPENED, session=str(uuid.uuid4())), p.UNKNOWN_SESSION),
        ("a second hello", p.dumps(p.HELLO, **{**HELLO, "slots": 0}), p.DUPLICATE_HELLO),
    ]


@run_async
async def test_each_malformed_message_gets_its_error_code_and_the_connection_stays_open(alice_token: str) -> None:
    ws = client(alice_token)
    await say_hello(ws)
    got = [(what, (await reply_to(ws, message))["code"]) for what, message, _ in malformed()]
    assert got == [(what, code) for what, _, code in malformed()]
    long_ago = timezone.now() - timedelta(hours=1)
    await database_sync_to_async(Provider.objects.update)(last_seen=long_ago)
    await ws.send_json_to({"type": "heartbeat", "sessions": 0, "steps_served": 0})
    await reply_to(ws, "{nope")  # answered after the heartbeat was handled
    provider = await provider_row()
    assert provider.last_seen is not None and provider.last_seen > long_ago
    assert (provider.state, provider.slots) == ("online", 3)
    await ws.disconnect()


def job_using(session: uuid.UUID, state: str) -> None:
    buyer = User.objects.create_user(f"buyer-{state}")
    model = LanguageModel.objects.create(
        name=f"m-{state}", source_sha256="0" * 64, config={"n_layers": 2}, tokenizer_sha256="0"
    )
    pipeline = [{"hop": 0, "shard": "m:f32:0-1", "provider": 999, "session": str(session), "until_step": None}]
    Job.objects.create(buyer=buyer, model=model, messages=[], state=state, pipeline=pipeline)


@run_async
async def test_another_providers_live_session_is_not_yours(alice_token: str) -> None:
    live, finished = uuid.uuid4(), uuid.uuid4()
    await database_sync_to_async(job_using)(live, Job.State.RUNNING)
    await database_sync_to_async(job_using)(finished, Job.State.DONE)
    ws = client(alice_token)
    await say_hello(ws)
    hidden = np.zeros((1, 1, 8), dtype=np.float16)
    for message in (
        output(live, 0, hidden),
        p.dumps(p.SESSION_OPENED, session=str(live)),
        p.dumps(p.ERROR, session=str(live), code="step_failed", message="boom"),
    ):
        reply = await reply_to(ws, message)
        assert (reply["code"], reply["message"]) == (p.NOT_YOUR_SESSION, f"session {live} is not yours")
    assert (await reply_to(ws, output(finished, 0, hidden)))["code"] == p.UNKNOWN_SESSION
    await ws.disconnect()


@run_async
async def test_a_session_is_relayed_between_its_runner_and_its_provider(alice_token: str) -> None:
    layer = get_channel_layer()
    runner = await layer.new_channel()
    ws = client(alice_token)
    await say_hello(ws)
    provider = await provider_row()
    session = uuid.uuid4()

    async def from_runner(kind: str, **fields: Any) -> None:
        await layer.send(provider.channel_name, {"type": kind, "session": str(session), **fields})

    async def to_runner() -> dict[str, Any]:
        message: dict[str, Any] = await asyncio.wait_for(layer.receive(runner), WAIT)
        assert message["session"] == str(session)
        return message

    await from_runner("provider.open", hop=1, shard=SHARD, reply_to=runner)
    assert await ws.receive_json_from(timeout=WAIT) == {
        "type": "open_session",
        "session": str(session),
        "hop": 1,
        "shard": SHARD,
        "head_output": "logits",
    }
    await ws.send_json_to({"type": "session_opened", "session": str(session), "load_ms": 12.5})
    assert await to_runner() == {"type": "runner.opened", "session": str(session), "load_ms": 12.5}

    step0 = wire.encode(wire.MessageType.STEP_INPUT, session, 0, 1, np.ones((1, 3, 8), dtype=np.float16))
    await from_runner("provider.step", step=0, tokens=3, frame=step0)
    assert await ws.receive_from(timeout=WAIT) == step0
    answer = output(session, 0, np.full((1, 3, 8), 0.5, dtype=np.float16))
    await ws.send_to(bytes_data=answer)
    # The last hop of this session: its output goes to the runner only ("relayed": nowhere on).
    assert await to_runner() == {
        "type": "runner.output",
        "session": str(session),
        "step": 0,
        "frame": answer,
        "relayed": None,
    }
    assert (await reply_to(ws, answer))["code"] == p.UNEXPECTED_STEP  # step 0 was answered already

    await from_runner("provider.step", step=1, tokens=1, frame=step0)
    await ws.receive_from(timeout=WAIT)
    wrong = await reply_to(ws, output(session, 1, np.zeros((1, 3, 8), dtype=np.float16)))
    assert (
        wrong["code"] == p.BAD_FRAME
        and "must return float16/float32[1, 1, 8], got float16[1, 3, 8]" in wrong["message"]
    )
    assert (await to_runner())["type"] == "runner.error"
    await ws.send_json_to({"type": "error", "session": str(session), "code": "context_overflow", "message": "full"})
    assert await to_runner() == {
        "type": "runner.error",
        "session": str(session),
        "code": "context_overflow",
        "message": "full",
    }

    await from_runner("provider.close")
    assert await ws.receive_json_from(timeout=WAIT) == {"type": "close_session", "session": str(session)}
    assert (await reply_to(ws, p.dumps(p.SESSION_OPENED, session=str(session))))["code"] == p.UNKNOWN_SESSION

    session = uuid.uuid4()  # a second session, still open when the provider drops
    await from_runner("provider.open", hop=0, shard=SHARD, reply_to=runner)
    await ws.receive_json_from(timeout=WAIT)
    await ws.disconnect()
    assert await to_runner() == {"type": "runner.lost", "session": str(session), "provider": provider.pk}
    assert (await provider_row()).state == "offline"


@run_async
async def test_a_greedy_jobs_head_answers_with_the_argmax_and_logits_are_still_accepted(alice_token: str) -> None:
    layer = get_channel_layer()
    runner = await layer.new_channel()
    ws = client(alice_token)
    await say_hello(ws)
    provider = await provider_row()
    head = {**SHARD, "has_head": True}

    async def opened(head_output: str) -> uuid.UUID:
        session = uuid.uuid4()
        event = {"session": str(session), "hop": 1, "shard": head, "reply_to": runner, "head_output": head_output}
        await layer.send(provider.channel_name, {"type": "provider.open", **event})
        got = await ws.receive_json_from(timeout=WAIT)
        assert got.get("head_output") == head_output, got
        return session

    async def answer(session: uuid.UUID, step: int, tensor: np.ndarray) -> dict[str, Any]:
        ask = wire.encode(wire.MessageType.STEP_INPUT, session, step, 1, np.ones((1, 1, 8), dtype=np.float16))
        await layer.send(
            provider.channel_name,
            {"type": "provider.step", "session": str(session), "step": step, "tokens": 1, "frame": ask},
        )
        await ws.receive_from(timeout=WAIT)
        await ws.send_to(bytes_data=output(session, step, tensor))
        message: dict[str, Any] = await asyncio.wait_for(layer.receive(runner), WAIT)
        return message

    greedy = await opened("argmax")
    relayed = await answer(greedy, 0, np.array([[7]], dtype=np.int64))
    assert relayed["type"] == "runner.output" and wire.decode(relayed["frame"]).tensor.tolist() == [[7]]
    assert (await answer(greedy, 1, np.zeros((1, 10), dtype=np.float32)))["type"] == "runner.output"
    refused = await answer(greedy, 2, np.array([[10]], dtype=np.int64))  # the vocabulary has 10 tokens
    assert (refused["type"], refused["code"]) == ("runner.error", p.BAD_FRAME)
    told = await ws.receive_json_from(timeout=WAIT)
    assert (told["code"], told["message"]) == (p.BAD_FRAME, "step 2 must return an int64 [1, 1] token id below 10")
    sampled = await opened("logits")  # a job that samples needs the logits: an argmax is refused
    refused = await answer(sampled, 0, np.array([[7]], dtype=np.int64))
    assert (refused["type"], refused["code"]) == ("runner.error", p.BAD_FRAME)
    assert "must return float32[1, 10], got int64[1, 1]" in (await ws.receive_json_from(timeout=WAIT))["message"]
    await ws.disconnect()


@run_async
async def test_a_hops_output_reaches_the_next_hop_in_this_process_without_the_channel_layer(
    alice_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = get_channel_layer()
    runner = await layer.new_channel()
    first, second = client(alice_token), client(alice_token)
    await say_hello(first, "first")
    await say_hello(second, "second")
    rows = await database_sync_to_async(lambda: list(Provider.objects.order_by("pk")))()
    one, two = uuid.uuid4(), uuid.uuid4()
    forward = {"channel": rows[1].channel_name, "session": str(two), "hop": 1}
    await layer.send(
        rows[0].channel_name,
        {
            "type": "provider.open",
            "session": str(one),
            "hop": 0,
            "shard": SHARD,
            "reply_to": runner,
            "forward": forward,
        },
    )
    await layer.send(
        rows[1].channel_name,
        {"type": "provider.open", "session": str(two), "hop": 1, "shard": SHARD, "reply_to": runner},
    )
    await first.receive_json_from(timeout=WAIT)
    await second.receive_json_from(timeout=WAIT)
    sent: list[str] = []
    original = layer.send

    async def recording(channel: str, message: dict[str, Any]) -> None:
        sent.append(channel)
        await original(channel, message)

    monkeypatch.setattr(layer, "send", recording)
    step = wire.encode(wire.MessageType.STEP_INPUT, one, 0, 0, np.ones((1, 2, 8), dtype=np.float16))
    await relay.deliver(
        layer, rows[0].channel_name, ProviderStep(session=str(one), step=0, tokens=2, frame=step, forward=True)
    )
    assert await first.receive_from(timeout=WAIT) == step
    hidden = np.full((1, 2, 8), 0.25, dtype=np.float16)
    await first.send_to(bytes_data=output(one, 0, hidden))
    relayed = wire.decode(await second.receive_from(timeout=WAIT))  # the next hop got it, readdressed
    assert (relayed.kind, relayed.session, relayed.step, relayed.shard) == (wire.MessageType.STEP_INPUT, two, 0, 1)
    assert np.array_equal(relayed.tensor, hidden)
    copy = await asyncio.wait_for(layer.receive(runner), WAIT)  # the runner's copy still goes through the layer
    assert copy["type"] == "runner.output" and copy["session"] == str(one)
    assert sent == [runner], "the step went to the next hop's consumer through the layer, not its inbox"
    await first.disconnect()
    await second.disconnect()
    await relay.deliver(layer, rows[1].channel_name, ProviderClose(session=str(two)))
    assert sent[-1] == rows[1].channel_name, "a consumer that has gone is reached through the layer again"
