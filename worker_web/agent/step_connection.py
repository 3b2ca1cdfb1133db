"""The provider agent's WebSocket connection: decode steps are answered in the connection's own read callback.

Built only on websockets' public Sans-I/O API (`websockets.client.ClientProtocol`: it parses and checks every byte,
answers pings, runs both handshakes) and an asyncio `Protocol` of our own that moves bytes between it and the
socket. Owning the read callback is what lets a whole binary message be offered to `take_now` as soon as it is read,
and queued for the agent's reader only when refused, so a decode step runs and answers without waiting for the
reader's turn of the event loop; `send_now` answers from that synchronous code. No private part of websockets is
read, so any websockets version with this API will do (`transport/accelerator.py` pins nothing for the agent).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Mapping

from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import State
from websockets.typing import Origin
from websockets.uri import parse_uri

# Stop reading the socket while this many messages wait for the reader; read again at QUEUE_LOW (websockets'
# asyncio client uses the same marks, counted in frames).
QUEUE_HIGH, QUEUE_LOW = 16, 4


class StepConnection(asyncio.Protocol):
    """The provider's connection to the server. Iterate over it for messages (str for text, bytes for binary; the
    iteration ends after a normal close and raises ConnectionClosedError after any other), `send` and `close` as
    with websockets' own connection. A whole binary message is first offered to `take_now` in the read callback; a
    refused one, and every message after it until the reader has taken them, waits for the reader in arrival
    order. It pings the server every `ping_interval` as websockets' own client does. Opened by `open_connection`
    (or `connect`, for `async with`)."""

    take_now: Callable[[bytes], bool] | None = None

    def __init__(self, protocol: ClientProtocol, *, ping_interval: float, ping_timeout: float, close_timeout: float):
        self.protocol = protocol
        self.ping_interval, self.ping_timeout, self.close_timeout = ping_interval, ping_timeout, close_timeout
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = self.loop.create_future()  # the opening handshake's outcome
        self.lost: asyncio.Future[None] = self.loop.create_future()  # the TCP connection ended
        self.messages: collections.deque[str | bytes] = collections.deque()  # waiting for the reader, in order
        self.fragments: list[bytes] = []  # of a fragmented message, its first frame's opcode in `fragmented`
        self.fragmented = Opcode.CONT
        self.reader: asyncio.Future[None] | None = None  # the reader waits for a message on it
        self.reading_paused = False
        self.writers: list[asyncio.Future[None]] = []  # senders waiting for the write buffer to drain
        self.writing_paused = False
        self.pong: tuple[bytes, asyncio.Future[None]] | None = None  # the keepalive ping in flight
        self.keepalive: asyncio.Task[None] | None = None
        self.close_timer: asyncio.TimerHandle | None = None

    # --- what the agent uses -------------------------------------------------------------------------------------

    @property
    def close_code(self) -> int | None:
        return self.protocol.close_code

    @property
    def close_reason(self) -> str | None:
        return self.protocol.close_reason

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        try:
            while True:
                yield await self.recv()
        except ConnectionClosedOK:
            return

    async def recv(self) -> str | bytes:
        """The next message; ConnectionClosed once the connection is closed and every message before that is read."""
        while not self.messages:
            if self.lost.done():
                raise self.protocol.close_exc
            self.reader = self.loop.create_future()
            try:
                await self.reader
            finally:
                self.reader = None
        message = self.messages.popleft()
        if self.reading_paused and len(self.messages) <= QUEUE_LOW and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        return message

    async def send(self, message: str | bytes) -> None:
        """Send one message, whole (a message is never interleaved with another, `send_now`'s included)."""
        if self.protocol.state is not State.OPEN:
            await self._closed()
        if isinstance(message, str):
            self.protocol.send_text(message.encode())
        else:
            self.protocol.send_binary(message)
        self._write()
        while self.writing_paused and not self.lost.done():
            writer = self.loop.create_future()
            self.writers.append(writer)
            await writer

    def send_now(self, data: bytes) -> bool:
        """Send a binary message from synchronous code (False when the connection is not open). It goes out after
        whatever was sent before it; the write buffer holds it when the socket is slow."""
        if self.protocol.state is not State.OPEN:
            return False
        self.protocol.send_binary(data)
        self._write()
        return True

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """The closing handshake: send a close frame and wait, at most `close_timeout`, for the server to end the TCP
        connection (idempotent)."""
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason)
            self._write()
        elif self.protocol.state is State.CONNECTING and self.transport is not None:
            self.transport.abort()
        self._expect_close()
        await asyncio.shield(self.lost)

    async def _closed(self) -> None:
        """Wait for the connection to end (it is closing), then raise how it ended."""
        self._expect_close()
        await asyncio.shield(self.lost)
        raise self.protocol.close_exc

    # --- asyncio.Protocol ----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._write()  # the handshake request, queued by `open_connection`

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        self._write()  # pongs, the close frame's echo, the end of the stream: before the answers take_now sends
        for event in self.protocol.events_received():
            if not self._event(event):
                break
        if self.protocol.close_expected():
            self._expect_close()
        if self.protocol.handshake_exc is not None:
            self._not_opened(self.protocol.handshake_exc)
        if len(self.messages) >= QUEUE_HIGH and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> None:
        self.protocol.receive_eof()
        self._write()

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.receive_eof()  # idempotent: the protocol is CLOSED from here on
        self._not_opened(self.protocol.handshake_exc or exc or ConnectionError("connection lost"))
        self.lost.set_result(None)
        for waiter in (self.reader, *self.writers, self.pong[1] if self.pong else None):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if self.keepalive is not None:
            self.keepalive.cancel()
        if self.close_timer is not None:
            self.close_timer.cancel()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        for writer in self.writers:
            if not writer.done():
                writer.set_result(None)
        self.writers.clear()

    # --- between the protocol and the socket ---------------------------------------------------------------------

    def _not_opened(self, exc: BaseException) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
            self.opened.exception()  # retrieved: `open_connection` raises it, unless it gave up waiting already

    def _event(self, event: object) -> bool:
        """Handle what the protocol read; False when the connection failed and the events after it must be dropped."""
        if not isinstance(event, Frame):  # the handshake's response (a failed handshake sets handshake_exc)
            # Not the state: the frames read with the response, a close among them, may have moved it on already.
            if self.protocol.handshake_exc is None and not self.opened.done():
                self.opened.set_result(None)
            return True
        if event.opcode is Opcode.PONG:
            if self.pong is not None and bytes(event.data) == self.pong[0] and not self.pong[1].done():
                self.pong[1].set_result(None)
            return True
        if event.opcode not in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
            return True  # pings are answered and closes echoed by the protocol itself
        return self._data_frame(event)

    def _data_frame(self, frame: Frame) -> bool:
        if not frame.fin or frame.opcode is Opcode.CONT:
            if frame.opcode is not Opcode.CONT:
                self.fragmented = frame.opcode
            self.fragments.append(bytes(frame.data))
            if not frame.fin:
                return True
            opcode, data = self.fragmented, b"".join(self.fragments)
            self.fragments.clear()
        else:
            opcode, data = frame.opcode, bytes(frame.data)
        if opcode is Opcode.BINARY:
            # Offered only with nothing waiting for the reader: a message never overtakes one read before it.
            if self.take_now is not None and not self.messages and self.take_now(data):
                return True
            self._deliver(data)
            return True
        try:
            self._deliver(data.decode())
        except UnicodeDecodeError as exc:
            self.protocol.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
            self._write()
            return False
        return True

    def _deliver(self, message: str | bytes) -> None:
        self.messages.append(message)
        if self.reader is not None and not self.reader.done():
            self.reader.set_result(None)

    def _write(self) -> None:
        """Write what the protocol has to send; its empty bytes ask to end the stream (half-close)."""
        if self.transport is None:
            return
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()
            else:  # TLS cannot half-close
                self.transport.close()

    def _expect_close(self) -> None:
        """The server ends the TCP connection after the closing handshake; end it here if it has not within
        `close_timeout` (a server that vanished, or that never answers the close)."""
        if self.close_timer is None and not self.lost.done() and self.transport is not None:
            self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)

    async def _keep_alive(self) -> None:
        """Ping every `ping_interval`; a pong not back within `ping_timeout` fails the connection (as websockets'
        asyncio client does: a dead peer is otherwise noticed only when TCP gives up)."""
        while True:
            await asyncio.sleep(self.ping_interval)
            if self.protocol.state is not State.OPEN:
                return
            payload = os.urandom(4)
            self.pong = (payload, self.loop.create_future())
            self.protocol.send_ping(payload)
            self._write()
            try:
                async with asyncio.timeout(self.ping_timeout):
                    await self.pong[1]
            except TimeoutError:
                if self.protocol.state is State.OPEN:
                    self.protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                    self._write()
                    self._expect_close()
                return


async def open_connection(
    url: str,
    *,
    origin: Origin | None = None,
    additional_headers: Mapping[str, str] | None = None,
    max_size: int | None = 2**20,
    open_timeout: float = 10.0,
    ping_interval: float | None = 20.0,
    ping_timeout: float = 20.0,
    close_timeout: float = 10.0,
) -> StepConnection:
    """Open the TCP (or TLS, for wss:) connection and run the opening handshake within `open_timeout` (else
    TimeoutError). A server that refuses the handshake raises websockets' InvalidStatus (its response attached), a
    reply that is no WebSocket handshake another InvalidHandshake, an unreachable server OSError."""
    uri = parse_uri(url)
    protocol = ClientProtocol(uri, origin=origin, max_size=max_size)
    request = protocol.connect()
    for name, value in (additional_headers or {}).items():
        request.headers[name] = value
    protocol.send_request(request)
    loop = asyncio.get_running_loop()
    connection: StepConnection | None = None

    def made() -> StepConnection:
        nonlocal connection
        connection = StepConnection(
            protocol, ping_interval=ping_interval or 0.0, ping_timeout=ping_timeout, close_timeout=close_timeout
        )
        return connection

    try:
        async with asyncio.timeout(open_timeout):
            await loop.create_connection(made, uri.host, uri.port, ssl=True if uri.secure else None)
            assert connection is not None
            await connection.opened
    except BaseException:
        if connection is not None and connection.transport is not None:
            connection.transport.abort()
        raise
    if ping_interval:
        connection.keepalive = loop.create_task(connection._keep_alive())
    return connection


@contextlib.asynccontextmanager
async def connect(
    url: str, *, origin: Origin | None = None, additional_headers: Mapping[str, str] | None = None, max_size: int | None
) -> AsyncIterator[StepConnection]:
    """`open_connection`, closed on the way out (the closing handshake, as with websockets' `connect`)."""
    connection = await open_connection(url, origin=origin, additional_headers=additional_headers, max_size=max_size)
    try:
        yield connection
    finally:
        with contextlib.suppress(ConnectionClosed):
            await connection.close()
