"""The headless provider agent: lends this machine's CPU to the market over one WebSocket.

It says hello with its capacity, answers the server's benchmark challenge on the real shard workload (inputs the
server chose, timed by the server, the answer checked: inference/challenge.py), then serves what the server asks:
open a session on a shard (downloading and hash-checking the shard into a disk cache keyed by SHA-256 first),
run step frames through it with a KV cache per session, close sessions. When the connection drops it
reconnects with capped exponential backoff; shards stay cached and loaded. No Django: it needs only inference/,
transport.protocol and this package's modules, so it runs anywhere the model runtime runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import logging
import os
import random
import statistics
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Origin

from inference import challenge, commitment, wire
from inference.errors import InferenceError, ShardIntegrityError
from inference.runtime import ShardRuntime, StepOutput
from transport import accelerator
from transport import protocol as p
from worker_web.agent import step_connection
from worker_web.agent.state_store import StateStore
from worker_web.agent.step_connection import StepConnection

log = logging.getLogger("provider")
BACKOFF_FIRST, BACKOFF_CAP = 1.0, 30.0
INLINE_TOKENS = 16  # steps of at most this many tokens run on the event loop itself (milliseconds each)


class Connection(Protocol):
    """What the agent uses of its WebSocket: websockets' own asyncio connection and StepConnection both offer it."""

    @property
    def close_code(self) -> int | None: ...

    @property
    def close_reason(self) -> str | None: ...

    def __aiter__(self) -> AsyncIterator[str | bytes]: ...

    async def send(self, message: str | bytes) -> None: ...


class AuthRefused(Exception):
    """The server refused the token: retrying cannot help."""


class Disconnected(Exception):
    """The server closed the connection cleanly (a restart, a deploy): reconnect."""


class ShardCache:
    """Shard files on disk under their SHA-256; a file is fetched once and checked before it is kept."""

    def __init__(self, directory: Path, server: str, token: str) -> None:
        self.directory = directory
        self.server = server
        self.token = token
        self.downloads = 0
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.directory / f"{sha256}.onnx"

    def fetch(self, shard: dict[str, Any]) -> Path:
        """The shard's file, downloaded only when it is not cached (blocking: run it in a thread)."""
        path = self.path(shard["sha256"])
        if path.exists():
            return path
        request = urllib.request.Request(self.server + shard["url"], headers={"Authorization": f"Token {self.token}"})
        partial = path.with_suffix(f".part{os.getpid()}")
        digest = hashlib.sha256()
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response, partial.open("wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != shard["sha256"]:
            partial.unlink()
            raise ShardIntegrityError(f"downloaded {shard['id']} does not match its SHA-256; discarded")
        partial.rename(path)  # atomic: a crash mid-download never leaves a file under the final name
        self.downloads += 1
        log.info(
            "downloaded %s (%.1f MB) in %.1f s", shard["id"], path.stat().st_size / 1e6, time.perf_counter() - started
        )
        return path

    def discard(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)


@dataclasses.dataclass
class Session:
    runtime: ShardRuntime
    hop: int
    argmax: bool = False  # a head shard asked for the argmax of its logits only (protocol.HEAD_ARGMAX)
    next_step: int = 0
    last_output: bytes = b""  # the frame answering step next_step - 1, sent again if that step is asked again


class ProviderAgent:
    def __init__(
        self,
        *,
        server: str,
        token: str,
        name: str,
        slots: int,
        cache_dir: Path,
        memory_bytes: int = 0,
        ask: int | None = None,
        commitments: bool = True,
    ) -> None:
        self.server = server.rstrip("/")
        # Off only to measure what committing costs (bench/verification.py): a provider that does not commit loses
        # every audit or challenge of its work.
        self.commitments = commitments
        self.token = token
        self.name = name
        self.slots = slots
        self.memory_bytes = memory_bytes
        self.ask = ask  # base units per layer-token; None: the platform's figure
        self.cache = ShardCache(cache_dir, self.server, token)
        self.states = StateStore(cache_dir / "states")  # what it committed to, kept to answer reveals
        self._uncommitted: list[tuple[uuid.UUID, int, np.ndarray]] = []  # served, commitment not yet sent
        self._commit_scheduled: asyncio.Handle | None = None
        self.runtimes: dict[str, ShardRuntime] = {}  # by SHA-256: loaded once, kept across reconnects
        self.sessions: dict[uuid.UUID, Session] = {}
        self.ns_per_layer_token: int | None = None  # its own figure from the last challenge it answered
        self.measured_ns_per_layer_token: int | None = None  # the server's, from the last `benchmarked`
        self.benchmark_shard: dict[str, Any] | None = None  # this connection's, once loaded and announced
        self.steps_served = 0
        self.steps_at_once = 0  # of those, run in the connection's callback (StepConnection.take_now)
        self.welcomed = False
        self._working = False  # the worker is handling a message (the reader then queues the next one behind it)
        self.heartbeat_seconds = 15.0
        # One thread runs the model: steps of all sessions take turns, and ONNX Runtime's own pool uses the cores.
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard")

    @property
    def ws_url(self) -> str:
        parts = urlsplit(self.server)
        return urlunsplit(("wss" if parts.scheme == "https" else "ws", parts.netloc, "/ws/provider/", "", ""))

    async def run_forever(self) -> None:
        """Connect, serve, and reconnect after a drop: 1 s, 2 s, 4 s ... at most 30 s, with jitter."""
        delay = BACKOFF_FIRST
        while True:
            self.welcomed = False
            try:
                await self.serve_once()
            # InvalidHandshake: a refused handshake (InvalidStatus) or a reply that is none, as from a server that
            # stops while it answers: both worth another try later.
            except (TimeoutError, OSError, ConnectionClosed, InvalidHandshake, Disconnected, p.ProtocolError) as exc:
                if self.welcomed:
                    delay = BACKOFF_FIRST  # it was a working connection: start the backoff again
                log.warning("connection to %s lost (%s); retrying in %.1f s", self.server, exc, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, BACKOFF_CAP)

    async def serve_once(self) -> None:
        """One connection, served until it closes (then Disconnected or ConnectionClosed, or AuthRefused)."""
        async with self._connect() as ws:
            try:
                await self._serve(ws)
            except ConnectionClosed:
                if ws.close_code != p.CLOSE_UNAUTHORIZED:
                    raise
            # 4401 is not a normal close, so it usually arrives as ConnectionClosedError, from the reader or from a
            # send (the hello may race the server's close): no retry can help.
            if ws.close_code == p.CLOSE_UNAUTHORIZED:
                raise AuthRefused(f"the server refused the token: {ws.close_reason or 'unauthorized'}")
            raise Disconnected(f"the server closed the connection ({ws.close_code} {ws.close_reason or ''})".strip())

    async def _serve(self, ws: Connection) -> None:
        """Say hello and handle the server's messages until the connection closes normally (ConnectionClosed
        otherwise)."""
        for session_id, session in self.sessions.items():  # the server forgot them when the connection dropped
            session.runtime.close(str(session_id))
            await self._in_thread(self.states.close, session_id)  # what it committed to stays revealable
        self.sessions.clear()
        self.benchmark_shard = None  # each connection answers its own challenge
        self._uncommitted.clear()  # their commitments could not reach the server: nothing to stand behind
        if self._commit_scheduled is not None:
            self._commit_scheduled.cancel()
            self._commit_scheduled = None
        await ws.send(
            p.dumps(
                p.HELLO,
                protocol=p.PROTOCOL_VERSION,
                name=self.name,
                kind="headless",
                backend="cpu",
                slots=self.slots,
                memory_bytes=self.memory_bytes,
                ask=self.ask,
            )
        )
        queue: asyncio.Queue[str | bytes] = asyncio.Queue()
        worker = asyncio.create_task(self._work(ws, queue))
        beat = asyncio.create_task(self._heartbeat(ws))
        if hasattr(ws, "take_now"):  # a StepConnection
            fast = cast("StepConnection", ws)
            fast.take_now = lambda data: self._take_now(fast, queue, data)
        try:
            async for message in ws:
                if isinstance(message, str) and await self._control(ws, message):
                    continue
                if not self._working and queue.empty() and _decode_step(message):
                    # Nothing is queued before it: run it here, without the hand-off to the worker (a loop turn
                    # per hop). Larger steps still go to the worker, which keeps this loop reading meanwhile.
                    self._working = True
                    try:
                        await self._handle(ws, message)
                    finally:
                        self._working = False
                    continue
                queue.put_nowait(message)
        finally:
            worker.cancel()
            beat.cancel()

    def _connect(self) -> AbstractAsyncContextManager[Connection]:
        """StepConnection, which answers decode steps in its read callback (websockets' public Sans-I/O API only),
        unless RELAY_FAST_PATH is off (`transport.accelerator`): then websockets' asyncio client as it ships."""
        options: dict[str, Any] = {
            "origin": Origin(self.server),
            "additional_headers": {"Authorization": f"Token {self.token}"},
            "max_size": wire.MAX_FRAME_BYTES + 4096,
        }
        if accelerator.enabled("agent"):
            return step_connection.connect(self.ws_url, **options)
        return connect(self.ws_url, compression=None, proxy=None, **options)

    async def _control(self, ws: Connection, text: str) -> bool:
        """Handle the welcome and the server's errors at once (True); session messages are queued in order."""
        message = p.loads(text)
        if message["type"] == p.WELCOME:
            self.welcomed = True
            self.heartbeat_seconds = float(message.get("heartbeat_seconds", self.heartbeat_seconds))
            self.states.keep_seconds = float(message.get("states_keep_seconds", self.states.keep_seconds))
            await self._in_thread(self.states.prune)
            log.info("connected to %s as provider %s", self.server, message["provider_id"])
            if message.get("benchmark"):
                await self._benchmark_ready(ws, message["benchmark"])
            return True
        if message["type"] == p.BENCHMARKED:
            self.measured_ns_per_layer_token = measured = int(message.get("ns_per_layer_token") or 0)
            log.info("the server measured %.3f ms per layer-token", measured / 1e6)
            return True
        if message["type"] == p.ERROR:
            log.warning("server says %s: %s", message.get("code"), message.get("message"))
            if message.get("code") == p.BENCHMARK_FAILED:
                self.welcomed = False  # the server closes now: back off as after a failed connection
            return True
        return False

    async def _heartbeat(self, ws: Connection) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            await ws.send(p.dumps(p.HEARTBEAT, sessions=len(self.sessions), steps_served=self.steps_served))

    async def _work(self, ws: Connection, queue: asyncio.Queue[str | bytes]) -> None:
        """Queued messages one at a time, in arrival order: a session is open before its first frame runs."""
        while True:
            message = await queue.get()
            self._working = True
            try:
                await self._handle(ws, message)
            finally:
                self._working = False

    def _take_now(self, ws: StepConnection, queue: asyncio.Queue[str | bytes], data: bytes) -> bool:
        """Run a decode step in the connection's callback and send its answer, when nothing is being handled or
        waits before it. Anything that goes wrong is left to the reader (False), which runs the message again and
        reports the error: a failed step changes no session."""
        if self._working or not queue.empty() or not _decode_step(data):
            return False
        try:
            answer = self._answer(data)
        except Exception:  # the reader's path reports it, or fails the connection as it always did
            return False
        ws.send_now(answer)  # a connection that is closing loses it, as it would any answer in flight
        self.steps_at_once += 1
        self._commit_soon(ws)
        return True

    async def _handle(self, ws: Connection, message: str | bytes) -> None:
        try:
            if isinstance(message, bytes):
                await self._step(ws, message)
            else:
                await self._session_message(ws, p.loads(message))
        except (p.ProtocolError, wire.BadFrame, InferenceError, OSError) as exc:
            code = getattr(exc, "code", p.STEP_FAILED)
            session = getattr(exc, "session", None)
            log.warning("%s: %s", code, exc)
            await ws.send(p.dumps(p.ERROR, code=code, message=str(exc), **({"session": session} if session else {})))

    async def _session_message(self, ws: Connection, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == p.OPEN_SESSION:
            session = message["session"]
            started = time.perf_counter()
            try:
                runtime = await self._runtime(message["shard"])
            except (InferenceError, OSError) as exc:
                raise _for_session(p.ProtocolError(str(exc), code=p.SHARD_FAILED), session) from None
            await self._in_thread(runtime.open, session)
            argmax = runtime.spec.has_head and message.get("head_output") == p.HEAD_ARGMAX
            self.sessions[uuid.UUID(session)] = Session(runtime=runtime, hop=int(message["hop"]), argmax=argmax)
            load_ms = round((time.perf_counter() - started) * 1000, 1)
            await ws.send(p.dumps(p.SESSION_OPENED, session=session, load_ms=load_ms))
        elif kind == p.CLOSE_SESSION:
            closed = self.sessions.pop(uuid.UUID(message["session"]), None)
            if closed is not None:
                closed.runtime.close(message["session"])
                if self._uncommitted:  # commitments first: the states they cover must be in the store
                    self._send_commits(ws)
                await self._in_thread(self.states.close, uuid.UUID(message["session"]))
        elif kind == p.BENCHMARK_CHALLENGE:
            await self._answer_challenge(ws, message)
        elif kind == p.REVEAL:
            await self._reveal(ws, message)
        elif kind == p.LOAD_SHARD:
            await self._runtime(message["shard"])
            await ws.send(p.dumps(p.SHARD_LOADED, shard_id=message["shard"]["id"], sha256=message["shard"]["sha256"]))
        else:
            raise p.ProtocolError(f"unknown message type {kind!r}")

    async def _step(self, ws: Connection, data: bytes) -> None:
        if _decode_step(data):  # a decode step: a thread handoff would cost more than it saves
            answer = self._answer(data)
        else:  # a prefill may take seconds: keep the connection's loop free meanwhile
            answer = await self._in_thread(self._answer, data)
        await ws.send(answer)
        self._commit_soon(ws)

    def _commit_soon(self, ws: Connection) -> None:
        """Send the commitments of the steps answered, in batches and off the step's path: a full batch on the next
        turn of the loop, a partial one after COMMIT_IDLE_SECONDS (docs/protocol.md)."""
        if not self._uncommitted or self._commit_scheduled is not None:
            return
        loop = asyncio.get_running_loop()
        if len(self._uncommitted) >= p.COMMIT_BATCH_STEPS:
            self._commit_scheduled = loop.call_soon(self._send_commits, ws)
        else:
            self._commit_scheduled = loop.call_later(p.COMMIT_IDLE_SECONDS, self._send_commits, ws)

    def _send_commits(self, ws: Connection) -> None:
        """Hash and send every step answered and not yet committed, and keep their states to answer reveals."""
        if self._commit_scheduled is not None:
            self._commit_scheduled.cancel()
            self._commit_scheduled = None
        served, self._uncommitted = self._uncommitted, []
        commits = []
        for session, step, layer_hidden in served:
            self.states.add(session, step, layer_hidden)
            commits.append([str(session), step, commitment.commit(layer_hidden)])
        for start in range(0, len(commits), p.COMMITS_PER_MESSAGE):
            batch = commits[start : start + p.COMMITS_PER_MESSAGE]
            asyncio.get_running_loop().create_task(_send_quietly(ws, p.dumps(p.COMMIT, commits=batch)))

    def _answer(self, data: bytes) -> bytes:
        """Run a step frame through its session and return the output frame; a step asked again (its answer was
        lost on the way) gets the same answer without running twice. Errors change nothing."""
        frame = wire.decode(data)
        session = self.sessions.get(frame.session)
        if session is None:
            raise _for_session(p.ProtocolError("session is not open here", code=p.UNKNOWN_SESSION), frame.session)
        if frame.kind == wire.MessageType.STEP_INPUT and frame.step == session.next_step - 1 and session.last_output:
            return session.last_output
        if frame.kind != wire.MessageType.STEP_INPUT or frame.step != session.next_step:
            message = f"expected step input {session.next_step}, got type {int(frame.kind)} step {frame.step}"
            raise _for_session(p.ProtocolError(message, code=p.UNEXPECTED_STEP), frame.session)
        try:
            result = self.compute(session, frame)
        except InferenceError as exc:
            raise _for_session(exc, frame.session) from None
        session.next_step += 1
        self.steps_served += 1
        output = self.output(session, frame, result)
        if self.commitments:
            self._uncommitted.append((frame.session, frame.step, result.layer_hidden))
        session.last_output = wire.encode(wire.MessageType.STEP_OUTPUT, frame.session, frame.step, frame.shard, output)
        return session.last_output

    def compute(self, session: Session, frame: wire.Frame) -> StepOutput:
        """Run one step through the session's shard (a test provider that cheats overrides this)."""
        return session.runtime.step(str(frame.session), frame.tensor)

    def output(self, session: Session, frame: wire.Frame, result: StepOutput) -> np.ndarray:
        """What goes back for a step: a head's argmax token or logits, or the hidden states as float16."""
        if session.argmax:
            return np.array([[np.argmax(result.output[-1])]], dtype=np.int64)
        if session.runtime.spec.has_head:
            return result.output
        return result.output.astype(np.float16)

    async def _reveal(self, ws: Connection, message: dict[str, Any]) -> None:
        """Open one layer's committed states for a range of steps: a frame per step, then the proofs."""
        request = str(message.get("request", ""))[:64]
        session = uuid.UUID(p.field(message, "session", str))
        layer = p.field(message, "layer", int, low=0, high=1023)
        first, last = p.field(message, "first_step", int, low=0), p.field(message, "last_step", int, low=0)
        if self._uncommitted:  # the states of every step answered so far go to the store (and their roots out)
            self._send_commits(ws)
        held = await self._in_thread(self.states.layer, session, first, last) if first <= last else None
        if held is None or layer >= next(iter(held.values())).shape[0]:
            message_text = f"no states of layer {layer} for steps {first}-{last} of session {session}"
            await ws.send(p.dumps(p.ERROR, code=p.NO_STATES, message=message_text, request=request))
            return
        proofs = []
        for step, layer_hidden in held.items():
            await ws.send(wire.encode(wire.MessageType.REVEAL, session, step, layer, layer_hidden[layer]))
            proofs.append(commitment.proof(commitment.leaves(layer_hidden), layer))
        await ws.send(p.dumps(p.REVEALED, request=request, session=str(session), layer=layer, proofs=proofs))

    async def _runtime(self, shard: dict[str, Any]) -> ShardRuntime:
        """The loaded shard, fetched into the cache first if needed; a cached file that fails its hash check is
        discarded and downloaded once more."""
        sha = shard["sha256"]
        if sha not in self.runtimes:
            for attempt in (1, 2):
                path = await self._in_thread(self.cache.fetch, shard)
                try:
                    self.runtimes[sha] = await self._in_thread(ShardRuntime, path, sha256=sha)
                    break
                except ShardIntegrityError:
                    log.warning("cached %s is corrupt; downloading it again", shard["id"])
                    self.cache.discard(sha)
                    if attempt == 2:
                        raise
        return self.runtimes[sha]

    async def _benchmark_ready(self, ws: Connection, shard: dict[str, Any]) -> None:
        """Load the welcome's benchmark shard (fetched once, kept across reconnects) and say so: the server's
        challenge follows, and its clock runs from then on."""
        await self._runtime(shard)
        self.benchmark_shard = shard
        await ws.send(p.dumps(p.BENCHMARK_READY, shard_id=shard["id"]))

    async def _answer_challenge(self, ws: Connection, message: dict[str, Any]) -> None:
        """Run the server's challenge on the benchmark shard and answer with the last step's output and its own
        timing (its claim: the server prices what it timed itself)."""
        shard = self.benchmark_shard
        if shard is None or message.get("shard_id") != shard["id"]:
            raise p.ProtocolError(f"a challenge on {message.get('shard_id')!r}, not on the shard this agent announced")
        runtime = await self._runtime(shard)
        result = await self._in_thread(self.run_challenge, runtime, p.challenge_fields(message))
        self.ns_per_layer_token = ns = result.ns_per_layer_token(len(runtime.layers))
        answer = challenge.encode_answer(result.answer)
        await ws.send(p.dumps(p.BENCHMARK, shard_id=shard["id"], ns_per_layer_token=ns, answer=answer))
        log.info("benchmark: %.3f ms per layer-token on %s by its own clock", ns / 1e6, shard["id"])

    def run_challenge(self, runtime: ShardRuntime, found: challenge.Challenge) -> challenge.Result:
        """The benchmark run the server asked for (a test provider that lies about it overrides this)."""
        return challenge.run(runtime, found)

    async def _in_thread(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: fn(*args, **kwargs))


def time_decode(runtime: ShardRuntime, *, prompt: int = 32, steps: int = 32) -> int:
    """Median ns per layer per token of single-token decode steps after a prompt, on hidden-state inputs (or
    token ids for a first shard): the workload a provider serves most. For local measurements (bench/); what the
    agent tells the server comes from the server's challenge (`_answer_challenge`)."""
    rng = np.random.default_rng(0)
    session = f"benchmark-{uuid.uuid4().hex}"
    runtime.open(session)

    def inputs(n: int) -> np.ndarray:
        if runtime.spec.has_embedding:
            return rng.integers(0, runtime.config.vocab, size=(1, n), dtype=np.int64)
        return rng.standard_normal((1, n, runtime.config.hidden)).astype(np.float32)

    try:
        runtime.step(session, inputs(prompt))
        times = []
        for _ in range(steps):
            started = time.perf_counter_ns()
            runtime.step(session, inputs(1))
            times.append(time.perf_counter_ns() - started)
    finally:
        runtime.close(session)
    return max(1, int(statistics.median(times) / len(runtime.layers)))


async def _send_quietly(ws: Connection, text: str) -> None:
    """Send a message whose loss only the connection's end explains (the reader reports that)."""
    with contextlib.suppress(ConnectionClosed):
        await ws.send(text)


def _decode_step(message: str | bytes) -> bool:
    """A frame of at most INLINE_TOKENS tokens (a malformed one is left to `_step`, which reports it)."""
    tokens = wire.peek_tokens(message) if isinstance(message, bytes) else None
    return tokens is not None and tokens <= INLINE_TOKENS


def _for_session(exc: Exception, session: uuid.UUID | str) -> Exception:
    exc.session = str(session)  # type: ignore[attr-defined]  # read back where the error is reported
    return exc
