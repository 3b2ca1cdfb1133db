"""The provider endpoint, /ws/provider/: transport between provider agents and the job runners.

Runners reach a provider through the channel layer (events `provider.open`, `provider.step`, `provider.close`
sent to its channel); the consumer forwards them as protocol messages and binary frames, and sends what the
provider returns to the runner that asked (`runner.opened`, `runner.output`, `runner.error`, `runner.lost`).
Every frame from a provider is checked here, so a malformed or misdirected one costs only an error message.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import uuid
from typing import Any

import numpy as np
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from config.ws_auth import TokenRevocationMixin
from inference import wire
from market import launch, selectors, services
from transport import protocol as p
from transport import relay
from transport.inbox import InboxConsumerMixin
from transport.messages import (
    Forward,
    ProviderClose,
    ProviderOpen,
    ProviderReveal,
    ProviderRoute,
    ProviderStep,
    RunnerError,
    RunnerLaunch,
    RunnerLost,
    RunnerOpened,
    RunnerOutput,
)
from transport.relay import RelayMixin
from verification.services import commitments, disputes
from worker_web import shutdown
from worker_web.benchmark import BenchmarkMixin

log = logging.getLogger(__name__)
LATE_COMMIT_SECONDS = 10.0


@dataclasses.dataclass
class Route:
    """A session a runner opened on this provider: where its outputs go and what shape they must have."""

    session: uuid.UUID
    reply_to: str
    hop: int
    has_head: bool
    hidden: int
    vocab: int
    # The next hop; for a greedy job's head, hop 0 for the next step's token; None for the last hop of a sampled job.
    forward: Forward | None = None
    head_output: str = p.HEAD_LOGITS  # what a head shard returns: its logits, or their argmax (greedy jobs)
    pending: dict[int, tuple[int, bool]] = dataclasses.field(default_factory=dict)  # step -> (tokens, go on?)

    def __post_init__(self) -> None:
        # The output of a decode step in its usual form, a header known but for the step number: float16 [1, 1,
        # hidden], or for a greedy job's head its token as int64 [1, 1] (`plain_output` reads those without decode).
        argmax = self.has_head and self.head_output == p.HEAD_ARGMAX
        dtype, shape = (wire.DTYPES[3], (1, 1)) if argmax else (wire.DTYPES[1], (1, 1, self.hidden))
        self._plain = wire.header_around_step(wire.MessageType.STEP_OUTPUT, dtype, self.session, self.hop, shape)
        self._plain_payload = wire.HEADER_BYTES + 4 * len(shape)
        self._plain_size = self._plain_payload + math.prod(shape) * dtype.itemsize
        self._plain_logits = self.has_head and not argmax  # logits: always decoded and checked in full

    def plain_output(self, data: bytes) -> tuple[int, int | None] | None:
        """(step, token or None) of a sound output of a pending single-token step in the usual form, read from the
        bytes with no decode; None for any other frame, which `wire.decode` and `check_output` then judge. It
        accepts no frame that those would refuse."""
        prefix, suffix = self._plain
        start = self._plain_payload
        if self._plain_logits or len(data) != self._plain_size or data[:24] != prefix or data[28:start] != suffix:
            return None
        step = int.from_bytes(data[24:28], "little")
        pending = self.pending.get(step)
        if pending is None or pending[0] != 1:
            return None
        if not self.has_head:
            return (step, None) if wire.float16_finite(data[start:]) else None
        token = int.from_bytes(data[start:], "little", signed=True)
        return (step, token) if 0 <= token < self.vocab else None

    def check_output(self, frame: wire.Frame, tokens: int) -> None:
        # Read on the relay for every hop of every token: dtype kind and size (C attributes), not dtype.name.
        tensor = frame.tensor
        kind, size = tensor.dtype.kind, tensor.dtype.itemsize
        expected: tuple[int, ...]
        sizes: tuple[int, ...]
        if self.has_head and self.head_output == p.HEAD_ARGMAX and kind == "i":  # the frame's only integer: int64
            if tensor.shape != (1, 1) or not 0 <= int(tensor[0, 0]) < self.vocab:
                raise wire.BadFrame(f"step {frame.step} must return an int64 [1, 1] token id below {self.vocab}")
            return
        if self.has_head:  # logits are always accepted: a provider may not know the argmax form
            expected, sizes, names = (1, self.vocab), (4,), "float32"
        else:
            expected, sizes, names = (1, tokens, self.hidden), (2, 4), "float16/float32"
        if tensor.shape != expected or kind != "f" or size not in sizes:
            raise wire.BadFrame(
                f"step {frame.step} must return {names}{list(expected)}, got {tensor.dtype.name}{list(tensor.shape)}"
            )
        if not np.isfinite(tensor).all():
            raise wire.BadFrame(f"step {frame.step} returned values that are not finite")


class ProviderConsumer(BenchmarkMixin, RelayMixin, TokenRevocationMixin, InboxConsumerMixin, AsyncWebsocketConsumer):  # type: ignore[misc]  # channels ships no type hints
    provider_id: int | None = None

    async def connect(self) -> None:
        self.routes: dict[uuid.UUID, Route] = {}
        # Sessions closed on this connection, newest last, with when: their last commitments may trail the close by
        # LATE_COMMIT_SECONDS, never more (a provider must not commit after it could know whether it is checked).
        self.closed: dict[uuid.UUID, float] = {}
        self.commits: list[tuple[uuid.UUID, int, str]] = []  # received, not yet stored
        self.reveals: dict[str, Reveal] = {}  # reveals asked of this provider, by request id
        self.relay_register()
        await self.accept()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self._error("unauthorized", "send a valid API token (Authorization: Token <key>, or ?token=)")
            await self.close(code=p.CLOSE_UNAUTHORIZED)
            return
        await self.token_group_join()

    async def disconnect(self, code: int) -> None:
        self._benchmark_timer_cancel()
        await self.token_group_leave()
        if self.provider_id is None:
            return
        shutdown.untrack(channel_name=self.channel_name)
        await self._store_commits()
        await database_sync_to_async(services.provider_disconnect)(
            provider_id=self.provider_id, channel_name=self.channel_name
        )
        for session, route in self.routes.items():
            await relay.deliver(
                self.channel_layer,
                route.reply_to,
                RunnerLost(session=str(session), provider=self.provider_id),
            )
        log.info("provider %s disconnected (code %s) with %d session(s)", self.provider_id, code, len(self.routes))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            return
        try:
            if bytes_data is not None:
                await self._frame(bytes_data)
                return
            message = p.loads(text_data or "")
            if self.provider_id is None and message["type"] != p.HELLO:
                raise p.ProtocolError("say hello first")
            handler = self._handlers().get(message["type"])
            if handler is None:
                raise p.ProtocolError(f"unknown message type {message['type']!r}")
            await handler(message)
        except (p.ProtocolError, wire.BadFrame) as exc:
            code = exc.code if isinstance(exc, p.ProtocolError) else p.BAD_FRAME
            await self._error(code, exc.message if isinstance(exc, p.ProtocolError) else str(exc))

    def _handlers(self) -> dict[str, Any]:
        return {
            p.HELLO: self._hello,
            p.BENCHMARK_READY: self._benchmark_ready,
            p.BENCHMARK: self._benchmark,
            p.SESSION_OPENED: self._session_opened,
            p.SHARD_LOADED: self._shard_loaded,
            p.HEARTBEAT: self._heartbeat,
            p.ERROR: self._provider_error,
            p.COMMIT: self._commit,
            p.REVEALED: self._revealed,
        }

    async def _error(self, code: str, message: str, **extra: Any) -> None:
        await self.send(text_data=p.dumps(p.ERROR, code=code, message=message, **extra))

    # --- control messages from the provider ---------------------------------------------------------------------

    async def _hello(self, message: dict[str, Any]) -> None:
        if self.provider_id is not None:
            # One provider per connection: a second hello would open a second row that this socket's close
            # could never take offline, so it would look online (and be placed) after the socket is gone.
            raise p.ProtocolError(
                f"this connection is provider {self.provider_id} already: open another connection for another",
                code=p.DUPLICATE_HELLO,
            )
        capacity = p.hello_fields(message)
        provider = await database_sync_to_async(services.provider_connect)(
            user=self.scope["user"], channel_name=self.channel_name, capacity=capacity
        )
        self.provider_id = provider.pk
        shutdown.track(channel_name=self.channel_name, provider_id=provider.pk)
        self.bench_shard = bench = await database_sync_to_async(_benchmark_descriptor)()
        await self.send(
            text_data=p.dumps(
                p.WELCOME,
                provider_id=provider.pk,
                protocol=p.PROTOCOL_VERSION,
                benchmark=bench,
                max_frame_bytes=wire.MAX_FRAME_BYTES,
                heartbeat_seconds=settings.PROVIDER_HEARTBEAT_SECONDS,
                # How long it keeps the states it commits to: the window, plus the longest a dispute may take.
                states_keep_seconds=settings.CHALLENGE_WINDOW_SECONDS + settings.CHAIN_DISPUTE_SECONDS,
            )
        )
        log.info("provider %s (%s) online with %d slot(s)", provider.pk, provider.name, provider.slots)

    async def _heartbeat(self, message: dict[str, Any]) -> None:
        await database_sync_to_async(services.provider_heartbeat)(
            provider_id=self.provider_id, channel_name=self.channel_name
        )

    async def _shard_loaded(self, message: dict[str, Any]) -> None:
        log.info("provider %s loaded %s", self.provider_id, message.get("shard_id"))

    async def _session_opened(self, message: dict[str, Any]) -> None:
        session, route = await self._own_route(p.field(message, "session", str))
        await relay.deliver(
            self.channel_layer,
            route.reply_to,
            RunnerOpened(session=str(session), load_ms=message.get("load_ms")),
        )

    async def _provider_error(self, message: dict[str, Any]) -> None:
        if message.get("code") == p.NO_STATES and str(message.get("request", "")) in self.reveals:
            asked = self.reveals.pop(str(message["request"]))
            await database_sync_to_async(_reveal_record)(self.provider_id, asked, [])
            return
        if not isinstance(message.get("session"), str):
            log.warning("provider %s reports %s: %s", self.provider_id, message.get("code"), message.get("message"))
            return
        session, route = await self._own_route(message["session"])
        await relay.deliver(
            self.channel_layer,
            route.reply_to,
            RunnerError(
                session=str(session),
                code=str(message.get("code", "error"))[:64],
                message=str(message.get("message", ""))[:500],
            ),
        )

    # --- commitments and reveals (verification) -----------------------------------------------------------------

    async def _commit(self, message: dict[str, Any]) -> None:
        """Commitments to the per-layer states of steps this provider answered: kept in memory and stored in
        batches (never on a step's path); those of a closed session are stored at once."""
        entries = message.get("commits")
        if not isinstance(entries, list) or len(entries) > p.COMMITS_PER_MESSAGE:
            raise p.ProtocolError(f'"commits" must be a list of at most {p.COMMITS_PER_MESSAGE} [session, step, root]')
        late = False
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[1], int) and entry[1] >= 0):
                raise p.ProtocolError("a commit is [session, step, root]")
            session = _session_id(entry[0])
            root = entry[2]
            if not (isinstance(root, str) and len(root) == 64 and all(c in "0123456789abcdef" for c in root)):
                raise p.ProtocolError("a commitment root is 64 lowercase hex digits")
            closed_at = self.closed.get(session)
            if session not in self.routes and (closed_at is None or time.monotonic() - closed_at > LATE_COMMIT_SECONDS):
                raise p.ProtocolError(f"session {session} is not open here", code=p.UNKNOWN_SESSION)
            late |= session in self.closed
            self.commits.append((session, entry[1], root))
        if late or len(self.commits) >= 64:
            await self._store_commits()

    async def _store_commits(self) -> None:
        if self.commits and self.provider_id is not None:
            batch, self.commits = self.commits, []
            await database_sync_to_async(_commitments_record)(self.provider_id, batch)

    async def provider_reveal(self, event: dict[str, Any]) -> None:
        """A referee asks this provider to open one layer's committed states over a range of steps."""
        asked = ProviderReveal.of(event)
        self.reveals[asked.request] = Reveal(
            request=asked.request,
            session=uuid.UUID(asked.session),
            layer=int(asked.layer),
            first_step=int(asked.first_step),
            last_step=int(asked.last_step),
        )
        fields = {k: event[k] for k in ("request", "session", "layer", "first_step", "last_step")}
        await self.send(text_data=p.dumps(p.REVEAL, **fields))

    def _reveal_frame(self, frame: wire.Frame) -> None:
        """One step of a revealed layer: kept with the reveal it answers until the proofs arrive."""
        for asked in self.reveals.values():
            if asked.session == frame.session and asked.layer == frame.shard:
                if not asked.first_step <= frame.step <= asked.last_step or frame.tensor.ndim != 2:
                    raise wire.BadFrame(f"step {frame.step} of layer {frame.shard} was not asked for")
                asked.states[frame.step] = np.array(frame.tensor, dtype=np.float32)
                return
        raise wire.BadFrame("revealed states that no reveal asked for")

    async def _revealed(self, message: dict[str, Any]) -> None:
        asked = self.reveals.pop(str(message.get("request", "")), None)
        if asked is None:
            raise p.ProtocolError("no reveal with that request is open")
        proofs = message.get("proofs")
        await database_sync_to_async(_reveal_record)(
            self.provider_id, asked, proofs if isinstance(proofs, list) else []
        )

    async def _own_route(self, session_text: str) -> tuple[uuid.UUID, Route]:
        """The route of a session of this provider; another provider's or an unknown one is a ProtocolError."""
        try:
            session = uuid.UUID(session_text)
        except ValueError:
            raise p.ProtocolError(f"{session_text!r} is not a session id") from None
        route = self.routes.get(session)
        if route is None:
            if await database_sync_to_async(selectors.session_is_live)(session=session):
                raise p.ProtocolError(f"session {session} is not yours", code=p.NOT_YOUR_SESSION)
            raise p.ProtocolError(f"session {session} is not open", code=p.UNKNOWN_SESSION)
        return session, route

    # --- tensor frames from the provider ------------------------------------------------------------------------

    async def _frame(self, data: bytes) -> None:
        if self.provider_id is None:
            raise p.ProtocolError("say hello before sending frames")
        frame = wire.decode(data)
        if frame.kind == wire.MessageType.REVEAL:
            self._reveal_frame(frame)
            return
        if frame.kind != wire.MessageType.STEP_OUTPUT:
            raise wire.BadFrame("a provider sends step outputs (message type 2) and revealed states (3) only")
        session, route = await self._own_route(str(frame.session))
        if frame.step not in route.pending:
            raise p.ProtocolError(f"step {frame.step} of session {session} was not asked for", code=p.UNEXPECTED_STEP)
        try:
            route.check_output(frame, route.pending[frame.step][0])
        except wire.BadFrame as exc:
            # A real step answered wrongly: the runner hears of it now instead of waiting for the deadline.
            await relay.deliver(
                self.channel_layer,
                route.reply_to,
                RunnerError(session=str(session), code=p.BAD_FRAME, message=str(exc)),
            )
            raise
        onward = _onward(route, frame.step, data, _token(frame))
        delivered = await relay.deliver(self.channel_layer, *onward) if onward else None
        await relay.deliver(self.channel_layer, route.reply_to, _runner_copy(route, frame.step, data, delivered))

    def receive_now(self, data: bytes) -> bool:
        """A step output relayed in the server's read callback: taken when the frame is sound, asked for, of this
        provider's session, and the next hop and the runner are both on this loop. Anything else, a bad frame
        included, is refused and takes `_frame`, which reports it."""
        if self.provider_id is None or len(data) < wire.HEADER_BYTES:
            return False
        route = self.routes.get(uuid.UUID(bytes=data[8:24]))
        if route is None:
            return False
        targets = [route.reply_to, route.forward.channel] if route.forward else [route.reply_to]
        if not all(relay.is_here(t) and relay.has_room(t) for t in targets):
            return False  # the usual path: through the layer, or a full inbox's ChannelFull, in `_frame`
        plain = route.plain_output(data)
        if plain is not None:  # a decode step's output, the usual case: no numpy on the relay
            step, token = plain
        else:
            try:
                frame = wire.decode(data)
                if frame.kind != wire.MessageType.STEP_OUTPUT or frame.step not in route.pending:
                    return False
                route.check_output(frame, route.pending[frame.step][0])
            except wire.BadFrame:
                return False
            step, token = frame.step, _token(frame)
        onward = _onward(route, step, data, token)
        delivered = relay.deliver_here(onward[0], onward[1].event()) if onward else None
        relay.deliver_here(route.reply_to, _runner_copy(route, step, data, delivered).event())
        return True

    # --- events from runners (channel layer) --------------------------------------------------------------------

    async def provider_open(self, event: dict[str, Any]) -> None:
        opened = ProviderOpen.of(event)
        shard = opened.shard
        session = uuid.UUID(opened.session)
        self.routes[session] = route = Route(
            session=session,
            reply_to=opened.reply_to,
            forward=opened.forward,
            hop=opened.hop,
            has_head=shard["has_head"],
            hidden=shard["hidden"],
            vocab=shard["vocab"],
            head_output=opened.head_output,
        )
        await self.send(
            text_data=p.dumps(
                p.OPEN_SESSION, session=str(session), hop=opened.hop, shard=shard, head_output=route.head_output
            )
        )

    async def provider_step(self, event: dict[str, Any]) -> None:
        step = ProviderStep.of(event)
        if self._expect(step):
            await self.send(bytes_data=step.frame)

    def take_event_now(self, event: dict[str, Any]) -> bool:
        """A step input relayed while this consumer is idle goes onto the socket at once."""
        if event["type"] != ProviderStep.TYPE or not self.idle():
            return False
        step = ProviderStep.of(event)
        return not self._expect(step) or self.send_now(step.frame)

    def _expect(self, step: ProviderStep) -> bool:
        """Record the step the provider is about to be asked; False when its session was closed meanwhile (the
        runner has moved on and ignores it: nothing is sent)."""
        route = self.routes.get(uuid.UUID(step.session))
        if route is None:
            return False
        route.pending[step.step] = (step.tokens, step.forward)
        return True

    async def provider_route(self, event: dict[str, Any]) -> None:
        routed = ProviderRoute.of(event)
        route = self.routes.get(uuid.UUID(routed.session))
        if route is not None:
            route.forward = routed.forward

    async def runner_launch(self, event: dict[str, Any]) -> None:
        """A round placed a job whose first hop is this provider: its runner runs in this process (JOB_RUNNERS)."""
        launch.launch_here(int(RunnerLaunch.of(event).job))

    async def provider_close(self, event: dict[str, Any]) -> None:
        closing = ProviderClose.of(event)
        session = uuid.UUID(closing.session)
        if self.routes.pop(session, None) is not None:
            self.closed[session] = time.monotonic()
            while len(self.closed) > 1024:
                self.closed.pop(next(iter(self.closed)))
            await self.send(text_data=p.dumps(p.CLOSE_SESSION, session=closing.session))
            await self._store_commits()


@dataclasses.dataclass
class Reveal:
    """A reveal asked of this provider, and the states it has sent for it so far."""

    request: str
    session: uuid.UUID
    layer: int
    first_step: int
    last_step: int
    states: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)


def _session_id(text: object) -> uuid.UUID:
    try:
        return uuid.UUID(str(text))
    except ValueError:
        raise p.ProtocolError(f"{text!r} is not a session id") from None


def _commitments_record(provider_id: int, commits: list[tuple[uuid.UUID, int, str]]) -> None:

    commitments.commitments_record(provider_id=provider_id, commits=commits)


def _reveal_record(provider_id: int | None, asked: Reveal, proofs: list[Any]) -> None:

    assert provider_id is not None
    disputes.reveal_record(
        provider_id=provider_id,
        request=asked.request,
        session=asked.session,
        layer=asked.layer,
        states=asked.states,
        proofs=proofs,
    )


def _token(frame: wire.Frame) -> int | None:
    """A head's argmax token (int64 [1, 1]); None for logits or hidden states."""
    return int(frame.tensor[0, 0]) if frame.tensor.dtype == np.int64 else None


def _onward(route: Route, step: int, data: bytes, token: int | None) -> tuple[str, ProviderStep] | None:
    """Take a checked output off the route's pending steps; the next hop's step input, unless this is the last hop
    or a replayed step (which goes no further). A greedy job's head sends its token on to hop 0 as the next step's
    input unless the job ends there (`Forward.carries_on`: the rule the runner applies, without a turn through it)."""
    tokens, go_on = route.pending.pop(step)
    forward = route.forward
    if not go_on or forward is None:
        return None
    following = uuid.UUID(forward.session)
    if forward.next_token:  # a greedy job's head: its argmax is hop 0's input for the next step
        if not forward.carries_on(token, step):
            return None  # the runner ends the job here (or samples, for logits)
        assert token is not None
        step, tokens = step + 1, 1
        onward = wire.encode_token(wire.MessageType.STEP_INPUT, following, step, forward.hop, token)
    else:
        onward = wire.readdress(data, kind=wire.MessageType.STEP_INPUT, session=following, shard=forward.hop)
    return forward.channel, ProviderStep(session=forward.session, step=step, tokens=tokens, frame=onward, forward=True)


def _runner_copy(route: Route, step: int, data: bytes, delivered: str | None) -> RunnerOutput:
    """The runner's copy of an output (the next hop's recorded input, or the head's answer), with how it went on:
    "now" (on the next provider's socket at once), "queued", "layer" or None (nowhere)."""
    return RunnerOutput(session=str(route.session), step=step, frame=data, relayed=delivered)


def _benchmark_descriptor() -> dict[str, Any] | None:
    shard = selectors.benchmark_shard()
    return selectors.shard_descriptor(shard) if shard is not None else None
