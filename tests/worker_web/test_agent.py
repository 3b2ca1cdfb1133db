"""The headless provider agent: reconnect backoff, the shard cache keyed by SHA-256, the decode benchmark, and its
connection to a real WebSocket server with the fast path (StepConnection) on and off."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from inference import commitment, wire
from inference.config import ShardSpec
from inference.errors import ShardIntegrityError
from inference.gguf_model import GGUFModel
from inference.runtime import ShardRuntime
from inference.shard_builder import build_shard
from inference.tiny import write_tiny_gguf
from transport import accelerator
from transport import protocol as p
from worker_web.agent.provider import AuthRefused, ProviderAgent, ShardCache, time_decode


class Stop(Exception):
    """Raised by the fake sleep to end run_forever after enough attempts."""


@pytest.fixture(params=["on", "off"])
def fast_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """RELAY_FAST_PATH on (the agent connects with StepConnection) or off (websockets' asyncio client)."""
    monkeypatch.setenv(accelerator.SWITCH, request.param)
    accelerator.enabled.cache_clear()
    yield request.param
    accelerator.enabled.cache_clear()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[ProviderAgent]:
    made = ProviderAgent(server="http://127.0.0.1:1/", token="t", name="test", slots=1, cache_dir=tmp_path / "cache")
    yield made
    made.executor.shutdown(wait=False)


def run_with_fake_sleep(
    agent: ProviderAgent, monkeypatch: pytest.MonkeyPatch, serve: Callable[[int], None], *, sleeps: int = 8
) -> tuple[list[float], int]:
    """Run agent.run_forever with serve_once replaced by serve(call number) and asyncio.sleep recording its delays
    instead of waiting; returns (the delays, how many times serve_once ran)."""
    delays: list[float] = []
    calls = 0

    async def serve_once() -> None:
        nonlocal calls
        calls += 1
        serve(calls)

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) == sleeps:
            raise Stop

    monkeypatch.setattr(agent, "serve_once", serve_once)
    monkeypatch.setattr(asyncio, "sleep", sleep)  # the agent calls asyncio.sleep
    with pytest.raises(Stop):
        asyncio.run(agent.run_forever())
    return delays, calls


def assert_jittered(delays: list[float], expected: list[float]) -> None:
    assert len(delays) == len(expected)
    for got, nominal in zip(delays, expected, strict=True):
        assert nominal * 0.8 <= got <= nominal * 1.2, f"{got:.2f} s is not within 20% of {nominal} s"


def refused(_: int) -> None:
    raise OSError("connection refused")


def test_reconnect_delays_double_from_one_second_up_to_thirty(
    agent: ProviderAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    delays, calls = run_with_fake_sleep(agent, monkeypatch, refused)
    assert calls == 8
    assert_jittered(delays, [1, 2, 4, 8, 16, 30, 30, 30])


def test_reconnect_delays_are_jittered(agent: ProviderAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    high, _ = run_with_fake_sleep(agent, monkeypatch, refused, sleeps=7)
    monkeypatch.setattr(random, "uniform", lambda low, high: low)
    low, _ = run_with_fake_sleep(agent, monkeypatch, refused, sleeps=7)
    assert high == pytest.approx([1.2, 2.4, 4.8, 9.6, 19.2, 36.0, 36.0])
    assert low == pytest.approx([0.8, 1.6, 3.2, 6.4, 12.8, 24.0, 24.0])


def test_a_welcomed_connection_resets_the_backoff(agent: ProviderAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    def serve(call: int) -> None:
        if call == 5:
            agent.welcomed = True  # what _control does on the server's welcome
        raise ConnectionClosed(None, None)

    delays, _ = run_with_fake_sleep(agent, monkeypatch, serve)
    assert_jittered(delays, [1, 2, 4, 8, 1, 2, 4, 8])


@pytest.mark.parametrize(
    "error",
    [
        TimeoutError("slow"),
        OSError("refused"),
        ConnectionClosed(None, None),
        p.ProtocolError("not JSON"),
        InvalidMessage("did not receive a valid HTTP response"),  # a server that stops while it answers
    ],
    ids=["timeout", "os-error", "closed", "protocol", "no-handshake"],
)
def test_connection_failures_are_retried(
    agent: ProviderAgent, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def serve(_: int) -> None:
        raise error

    delays, calls = run_with_fake_sleep(agent, monkeypatch, serve, sleeps=3)
    assert calls == 3
    assert_jittered(delays, [1, 2, 4])


def test_a_refused_token_is_not_retried(agent: ProviderAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    def serve(_: int) -> None:
        raise AuthRefused("the server refused the token")

    with pytest.raises(AuthRefused, match="refused the token"):
        run_with_fake_sleep(agent, monkeypatch, serve)


def test_the_websocket_url_follows_the_server_scheme(tmp_path: Path) -> None:
    plain = ProviderAgent(server="http://h:8000/", token="t", name="n", slots=1, cache_dir=tmp_path)
    secure = ProviderAgent(server="https://market.example", token="t", name="n", slots=1, cache_dir=tmp_path)
    assert (plain.ws_url, secure.ws_url) == ("ws://h:8000/ws/provider/", "wss://market.example/ws/provider/")


# --- the shard cache -------------------------------------------------------------------------------------------


class ShardServer:
    """A tiny HTTP server on 127.0.0.1 that serves `body` at any path and records each request's path and token."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  # the name http.server calls
                server.requests.append((self.path, self.headers.get("Authorization")))
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


BODY = b"onnx bytes " * 50_000  # over 512 KB: read in more than one chunk


@pytest.fixture
def shard_server() -> Iterator[ShardServer]:
    server = ShardServer(BODY)
    yield server
    server.close()


def descriptor(data: bytes) -> dict[str, Any]:
    sha = hashlib.sha256(data).hexdigest()
    return {"id": "m:f32:1-2", "sha256": sha, "url": f"/shards/{sha}/", "size": len(data)}


def test_a_shard_is_downloaded_once_and_then_read_from_the_cache(tmp_path: Path, shard_server: ShardServer) -> None:
    cache = ShardCache(tmp_path / "cache", shard_server.url, "secret")
    shard = descriptor(BODY)
    first = cache.fetch(shard)
    assert first == tmp_path / "cache" / f"{shard['sha256']}.onnx"
    assert first.read_bytes() == BODY
    assert shard_server.requests == [(shard["url"], "Token secret")]
    again = ShardCache(tmp_path / "cache", shard_server.url, "secret")  # a restarted provider, same cache folder
    assert again.fetch(shard) == first
    assert cache.fetch(shard) == first
    assert len(shard_server.requests) == 1
    assert (cache.downloads, again.downloads) == (1, 0)


def test_a_download_that_does_not_match_its_sha256_is_discarded(tmp_path: Path, shard_server: ShardServer) -> None:
    cache = ShardCache(tmp_path / "cache", shard_server.url, "secret")
    shard = descriptor(b"the bytes the server registered")
    with pytest.raises(ShardIntegrityError, match="does not match its SHA-256; discarded"):
        cache.fetch(shard)
    assert list((tmp_path / "cache").iterdir()) == []
    assert cache.downloads == 0
    with pytest.raises(ShardIntegrityError):
        cache.fetch(shard)  # nothing was kept, so it is fetched (and refused) again
    assert len(shard_server.requests) == 2


def test_discard_removes_a_cached_shard(tmp_path: Path, shard_server: ShardServer) -> None:
    cache = ShardCache(tmp_path / "cache", shard_server.url, "secret")
    shard = descriptor(BODY)
    cache.fetch(shard)
    cache.discard(shard["sha256"])
    assert not cache.path(shard["sha256"]).exists()
    cache.fetch(shard)
    assert len(shard_server.requests) == 2


# --- the benchmark ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> GGUFModel:
    return GGUFModel(write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", n_layers=4))


@pytest.mark.parametrize(("first", "end"), [(1, 3), (0, 1)], ids=["middle", "first"])
def test_time_decode_times_a_real_shard(tiny_model: GGUFModel, first: int, end: int) -> None:
    spec = ShardSpec("tiny", "f32", first, end, tiny_model.config.n_layers)
    runtime = ShardRuntime(build_shard(tiny_model, spec).SerializeToString())
    ns = time_decode(runtime, prompt=4, steps=3)
    assert isinstance(ns, int) and ns > 0
    assert runtime.sessions == []  # the benchmark's session is closed again
    runtime.open("after")
    inputs = np.zeros((1, 1), dtype=np.int64) if spec.has_embedding else np.zeros((1, 1, 64), dtype=np.float32)
    assert runtime.step("after", inputs).output.shape[1] == 1  # the runtime still serves real sessions


def test_each_connection_answers_its_own_challenge_with_the_shards_output(
    agent: ProviderAgent, tiny_model: GGUFModel
) -> None:
    """Against a real WebSocket server, twice (a reconnect): the agent loads the welcome's shard, says
    benchmark_ready, runs the challenge it gets and answers with the last step's output for that seed, equal to the
    server's own run; a failed benchmark keeps its reconnect backing off."""
    from websockets.asyncio.server import ServerConnection

    from inference import challenge
    from worker_web.agent.provider import Disconnected

    spec = ShardSpec("tiny", "f32", 1, 3, tiny_model.config.n_layers)
    data = build_shard(tiny_model, spec).SerializeToString()
    sha = hashlib.sha256(data).hexdigest()
    agent.runtimes[sha] = ShardRuntime(data)  # loaded already: nothing to download
    shard = {"id": spec.shard_id, "sha256": sha, "url": "/unused", "first_layer": 1, "end_layer": 3}
    answers: dict[int, dict[str, Any]] = {}

    def server(seed: int, verdict: str) -> Any:
        async def serve(ws: ServerConnection) -> None:
            assert p.loads(str(await ws.recv()))["type"] == p.HELLO
            await ws.send(p.dumps(p.WELCOME, provider_id=1, protocol=1, benchmark=shard))
            assert p.loads(str(await ws.recv())) == {"type": p.BENCHMARK_READY, "shard_id": spec.shard_id}
            await ws.send(
                p.challenge_message(challenge.Challenge(seed=seed, prompt=5, steps=4), shard_id=spec.shard_id)
            )
            answers[seed] = p.loads(str(await ws.recv()))
            await ws.send(verdict)
            await ws.close(1001 if verdict.startswith('{"type":"benchmarked"') else p.CLOSE_PROTOCOL)

        return serve

    passed = p.dumps(p.BENCHMARKED, shard_id=spec.shard_id, ns_per_layer_token=777, claimed_ns_per_layer_token=5)
    _serve_once(agent, server(11, passed), ends_with=Disconnected)
    assert agent.welcomed and agent.measured_ns_per_layer_token == 777
    failed = p.dumps(p.ERROR, code=p.BENCHMARK_FAILED, message="not the shard's output")
    _serve_once(agent, server(2**53 - 1, failed), ends_with=ConnectionClosed)  # 4400: run_forever reconnects
    assert not agent.welcomed  # run_forever does not restart its backoff from 1 s after this one

    reference = ShardRuntime(data)
    for seed, answer in answers.items():
        assert answer["type"] == p.BENCHMARK and answer["shard_id"] == spec.shard_id
        assert isinstance(answer["ns_per_layer_token"], int) and answer["ns_per_layer_token"] >= 1
        expected = challenge.run(reference, challenge.Challenge(seed=seed, prompt=5, steps=4)).answer
        assert np.array_equal(challenge.decode_answer(answer["answer"], tiny_model.config.hidden), expected)
    assert answers[11]["answer"] != answers[2**53 - 1]["answer"]


def test_a_server_that_closes_cleanly_is_a_reconnect_not_a_crash(agent: ProviderAgent, fast_path: str) -> None:
    """A restarting server closes with 1001: serve_once reports Disconnected, which run_forever retries."""
    from websockets.asyncio.server import ServerConnection, serve

    from worker_web.agent.provider import Disconnected

    async def server(ws: ServerConnection) -> None:
        hello = p.loads(str(await ws.recv()))
        assert hello["type"] == p.HELLO and hello["name"] == agent.name
        assert hello["ask"] == 42  # `provide --ask 42`: its own price goes out with the hello
        await ws.send(p.dumps(p.WELCOME, provider_id=1, protocol=1, benchmark=None))
        await ws.close(1001, "going away")

    async def scenario() -> None:
        agent.ask = 42
        async with serve(server, "127.0.0.1", 0) as running:
            port = next(iter(running.sockets)).getsockname()[1]
            agent.server = f"http://127.0.0.1:{port}"
            with pytest.raises(Disconnected, match="1001"):
                await agent.serve_once()
        assert agent.welcomed

    asyncio.run(scenario())


def test_a_close_with_4401_is_a_refused_token_not_a_reconnect(agent: ProviderAgent, fast_path: str) -> None:
    """The server closes an unauthenticated provider with 4401 (worker_web/consumers.py): serve_once raises
    AuthRefused, which run_forever does not retry, whichever connection reads it."""
    from websockets.asyncio.server import ServerConnection

    async def server(ws: ServerConnection) -> None:
        await ws.send(p.dumps(p.ERROR, code="unauthorized", message="send a valid API token"))
        await ws.close(p.CLOSE_UNAUTHORIZED)

    _serve_once(agent, server, ends_with=AuthRefused)
    assert not agent.welcomed


def test_a_refused_handshake_raises_what_run_forever_retries(agent: ProviderAgent, fast_path: str) -> None:
    """A 403 to the opening handshake (the token's header and the origin were sent) raises websockets'
    InvalidStatus, with either connection."""
    import http

    from websockets.asyncio.server import ServerConnection

    seen: list[tuple[str | None, str | None]] = []

    def refuse(connection: ServerConnection, request: Any) -> Any:
        seen.append((request.headers.get("Authorization"), request.headers.get("Origin")))
        return connection.respond(http.HTTPStatus.FORBIDDEN, "forbidden\n")

    async def never(ws: ServerConnection) -> None:
        raise AssertionError("the handshake was refused")

    _serve_once(agent, never, ends_with=InvalidStatus, process_request=refuse)
    assert seen == [("Token t", agent.server)]


# --- the head shard's answer -----------------------------------------------------------------------------------


class Recorder:
    """Stands in for the connection: keeps what the agent sends."""

    def __init__(self) -> None:
        self.sent: list[bytes | str] = []

    async def send(self, message: bytes | str) -> None:
        self.sent.append(message)


@pytest.mark.parametrize("head_output", [p.HEAD_ARGMAX, p.HEAD_LOGITS])
def test_a_head_session_answers_with_the_argmax_when_asked_and_the_logits_otherwise(
    agent: ProviderAgent, tiny_model: GGUFModel, head_output: str
) -> None:
    import uuid

    from inference import wire
    from worker_web.agent.provider import Session

    spec = ShardSpec("tiny", "f32", 2, 4, tiny_model.config.n_layers)
    runtime = ShardRuntime(build_shard(tiny_model, spec).SerializeToString())
    reference = ShardRuntime(build_shard(tiny_model, spec).SerializeToString())
    session = uuid.uuid4()
    runtime.open(str(session))
    reference.open("reference")
    agent.sessions[session] = Session(runtime=runtime, hop=1, argmax=head_output == p.HEAD_ARGMAX)
    connection = Recorder()
    hidden = np.random.default_rng(1).standard_normal((1, 3, tiny_model.config.hidden)).astype(np.float16)
    for step, tensor in enumerate([hidden, hidden[:, :1]]):
        frame = wire.encode(wire.MessageType.STEP_INPUT, session, step, 1, tensor)
        asyncio.run(agent._step(connection, frame))  # type: ignore[arg-type]  # a recorder, not a connection
        answer = wire.decode(connection.sent[-1]).tensor  # type: ignore[arg-type]
        logits = reference.step("reference", tensor).output
        if head_output == p.HEAD_ARGMAX:
            assert answer.dtype == np.int64 and answer.tolist() == [[int(np.argmax(logits[0]))]]
        else:
            assert answer.dtype == np.float32 and np.array_equal(answer, logits)


async def _open_session(ws: Any, shard_id: str, sha: str, session: Any) -> None:
    """The server's side up to an open session on hop 1: hello, welcome, open_session, session_opened."""
    assert p.loads(str(await ws.recv()))["type"] == p.HELLO
    await ws.send(p.dumps(p.WELCOME, provider_id=1, protocol=1, benchmark=None))
    shard = {"id": shard_id, "sha256": sha, "url": "/unused"}
    await ws.send(p.dumps(p.OPEN_SESSION, session=str(session), hop=1, shard=shard, head_output=p.HEAD_LOGITS))
    assert p.loads(str(await ws.recv()))["type"] == p.SESSION_OPENED


async def _next_frame(ws: Any, commits: list[list[Any]] | None = None) -> np.ndarray:
    """The next binary frame's tensor; the commitments the agent sends between its answers are collected."""
    while True:
        message = await ws.recv()
        if isinstance(message, bytes):
            return wire.decode(message).tensor
        body = p.loads(str(message))
        assert body["type"] == p.COMMIT, body
        if commits is not None:
            commits.extend(body["commits"])


def _layer_states(data: bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Each step's per-layer hidden states [n_layers, S, H] from a fresh runtime of the shard."""
    runtime = ShardRuntime(data)
    runtime.open("states")
    return [runtime.step("states", tensor).layer_hidden for tensor in inputs]


def _serve_once(agent: ProviderAgent, server: Any, *, ends_with: type[BaseException], **options: Any) -> None:
    """Run `server` as a real WebSocket server on loopback (with websockets' `serve` options) and the agent's
    connection to it until it ends."""
    from websockets.asyncio.server import serve

    async def scenario() -> None:
        async with serve(server, "127.0.0.1", 0, max_size=None, **options) as running:
            agent.server = f"http://127.0.0.1:{next(iter(running.sockets)).getsockname()[1]}"
            with pytest.raises(ends_with):
                await agent.serve_once()

    asyncio.run(scenario())


def test_decode_steps_are_answered_in_the_connections_callback_and_prefills_by_the_reader(
    agent: ProviderAgent, tiny_model: GGUFModel
) -> None:
    """Against a real WebSocket server: the prefill goes through the reader's queue (it may take seconds), each
    decode step is run as soon as its message is read (StepConnection.take_now), a step asked again gets the same
    answer without running twice, and a bad frame is still reported. Every answer equals the shard's own."""
    import uuid

    from websockets.asyncio.server import ServerConnection

    from inference import wire
    from worker_web.agent.provider import Disconnected

    spec = ShardSpec("tiny", "f32", 1, 3, tiny_model.config.n_layers)  # a middle shard: float16 hidden states out
    data = build_shard(tiny_model, spec).SerializeToString()
    sha = hashlib.sha256(data).hexdigest()
    agent.runtimes[sha] = ShardRuntime(data)  # loaded already: nothing to download
    reference = ShardRuntime(data)
    reference.open("reference")
    session = uuid.uuid4()
    hidden = np.random.default_rng(2).standard_normal((1, 20, tiny_model.config.hidden)).astype(np.float16)
    inputs = [hidden[:, :18], hidden[:, 18:19], hidden[:, 19:20]]
    answers: list[np.ndarray] = []
    errors: list[str] = []
    commits: list[list[Any]] = []

    async def server(ws: ServerConnection) -> None:
        await _open_session(ws, spec.shard_id, sha, session)
        for step, tensor in enumerate(inputs):
            await ws.send(wire.encode(wire.MessageType.STEP_INPUT, session, step, 1, tensor))
            answers.append(await _next_frame(ws, commits))
        await ws.send(wire.encode(wire.MessageType.STEP_INPUT, session, 2, 1, inputs[2]))  # asked again
        answers.append(await _next_frame(ws, commits))
        await ws.send(b"CMTF-not-a-frame")
        while (reply := p.loads(str(await ws.recv())))["type"] == p.COMMIT:
            commits.extend(reply["commits"])
        errors.append(reply["code"])
        await ws.send(p.dumps(p.CLOSE_SESSION, session=str(session)))  # the close flushes what is not sent yet
        while len(commits) < 3:
            reply = p.loads(str(await ws.recv()))
            assert reply["type"] == p.COMMIT, reply
            commits.extend(reply["commits"])
        await ws.close(1001, "going away")

    _serve_once(agent, server, ends_with=Disconnected)
    expected = [reference.step("reference", tensor).output for tensor in inputs]
    assert len(answers) == 4 and errors == [p.BAD_FRAME]
    for got, want in zip(answers, [*expected, expected[-1]], strict=True):
        assert np.array_equal(got, want.astype(np.float16))
    # Three steps ran (the repeat did not run again); answered at once, in the read callback: the two decode steps
    # and the repeat. The prefill (18 tokens) went through the reader.
    assert agent.steps_served == 3 and agent.steps_at_once == 3
    # One commitment per step served (the repeat is not committed again), in one batch: the Merkle root of that
    # step's per-layer hidden states, as the reference computes them; and the states are kept to answer reveals.
    roots = [commitment.commit(reference_states) for reference_states in _layer_states(data, inputs)]
    assert commits == [[str(session), step, root] for step, root in enumerate(roots)], commits
    kept = agent.states.layer(session, 0, 2)
    assert kept is not None and all(kept[s].shape[1] == inputs[s].shape[1] for s in range(3))


def test_a_step_frame_reads_the_same_whole_split_or_coalesced_and_a_bad_frame_still_fails_the_connection(
    agent: ProviderAgent, tiny_model: GGUFModel
) -> None:
    """The server writes the raw bytes: a decode frame split across two reads (its first bytes behind the prefill),
    two frames in one read, one whole frame, then a masked frame (which a server must never send). The agent answers
    each step as the shard does, the decode steps in the read callback however their bytes arrived, and the masked
    one closes the connection as a protocol error."""
    import uuid

    from websockets.asyncio.server import ServerConnection
    from websockets.exceptions import ConnectionClosedError

    from inference import wire

    spec = ShardSpec("tiny", "f32", 1, 3, tiny_model.config.n_layers)
    data = build_shard(tiny_model, spec).SerializeToString()
    sha = hashlib.sha256(data).hexdigest()
    agent.runtimes[sha] = ShardRuntime(data)
    reference = ShardRuntime(data)
    reference.open("reference")
    session = uuid.uuid4()
    hidden = np.random.default_rng(3).standard_normal((1, 22, tiny_model.config.hidden)).astype(np.float16)
    inputs = [hidden[:, :18], *(hidden[:, i : i + 1] for i in range(18, 22))]  # a prefill, then 4 decode steps
    answers: list[np.ndarray] = []
    closed: list[int | None] = []

    def raw(step: int) -> bytes:
        payload = wire.encode(wire.MessageType.STEP_INPUT, session, step, 1, inputs[step])
        assert 126 <= len(payload) < 1 << 16
        return b"\x82\x7e" + len(payload).to_bytes(2, "big") + payload  # FIN, binary, unmasked, 16-bit length

    async def server(ws: ServerConnection) -> None:
        await _open_session(ws, spec.shard_id, sha, session)
        # The prefill and the first 7 bytes of step 1 in one write, so one read; the prefill's answer shows that the
        # agent has read those bytes, so the rest of step 1 comes in a read of its own.
        split = raw(1)
        ws.transport.write(raw(0) + split[:7])
        answers.append(await _next_frame(ws))
        ws.transport.write(split[7:])
        answers.append(await _next_frame(ws))
        ws.transport.write(raw(2) + raw(3))
        answers.append(await _next_frame(ws))
        answers.append(await _next_frame(ws))
        ws.transport.write(raw(4))
        answers.append(await _next_frame(ws))
        masked = bytearray(raw(4))
        masked[1] |= 0x80
        ws.transport.write(bytes(masked[:4]) + b"\0\0\0\0" + bytes(masked[4:]))  # a zero mask: same payload
        try:
            while True:
                await ws.recv()
        except ConnectionClosedError:
            closed.append(ws.close_code)

    _serve_once(agent, server, ends_with=ConnectionClosedError)
    expected = [reference.step("reference", tensor).output.astype(np.float16) for tensor in inputs]
    assert len(answers) == len(expected)
    for got, want in zip(answers, expected, strict=True):
        assert np.array_equal(got, want)
    assert closed == [1002]  # protocol error
    # Steps 1 to 4 (the decode steps) ran at once, split, coalesced or whole.
    assert agent.steps_served == 5 and agent.steps_at_once == 4
