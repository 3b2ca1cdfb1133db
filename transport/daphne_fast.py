"""Binary WebSocket messages through Daphne without waiting for the event loop's next turns.

On the provider relay every hop of every token is one binary message in from a provider and one out to the next.
On Daphne's own path (timestamps in every process showed where a hop's time went; `bench/pipeline.py --fast-path
on,off` measures the difference) the message waited in the connection's queue for its consumer's task, the
consumer put the relayed frame into the next consumer's queue for that one's task, and the frame it sent waited
in Twisted's buffer for the reactor to poll the socket. These patches let a binary message skip those waits when
nothing is queued before it; every other message, and every binary message that arrives while its consumer is
busy, takes Daphne's path unchanged. They are an accelerator (`transport/accelerator.py`): installed only for
the exact versions they were written against, and never when RELAY_FAST_PATH is off.

- Frame: a read that holds exactly one whole binary message in one masked frame, on an open connection between
  messages with nothing buffered, is unmasked and handed to `onMessage` without autobahn's frame-by-frame state
  machine. Any other read (a partial, fragmented or oversized frame, text, control frames, compression) goes to
  autobahn, which also reports every protocol violation as before.
- Receive: a consumer can hand Daphne a `take_now(payload) -> bool` on its input queue
  (`transport.inbox.InboxConsumerMixin` does, for consumers that implement `receive_now`). Daphne's `onMessage`
  offers it each binary message first, in the reactor's read callback; only a refused message is queued.
- Send: `Server.create_application` puts a `send_now(data) -> bool` on each WebSocket connection's input queue,
  which sends a binary message on that connection at once from synchronous code (False when the connection is not
  open: the caller then takes the queued path, which handles a closed connection as before).
- Write: a binary message is framed here as one unmasked final frame (autobahn's `sendMessage` when anything
  needs it: compression, fragmentation, a send queue) and, when Twisted holds nothing unsent for the connection,
  sent with one `send` on its socket; the rest, if any, and every write behind buffered data go through Twisted's
  buffer (with `doWrite` at once: what the reactor would do when it next sees the socket writable). What cannot be
  written stays buffered and registered, for the reactor to finish or to report the connection lost.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from transport import accelerator


def install() -> None:
    """Patch Daphne (idempotent; a no-op where Daphne is not installed, or where `transport.accelerator` says the
    server's fast path is off: switched off, or other versions than it was written for)."""
    if not accelerator.enabled("server"):
        return
    try:
        from autobahn.websocket.xormasker import create_xor_masker
        from daphne.server import Server
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:
        return
    if getattr(WebSocketProtocol.serverSend, "writes_at_once", False):
        return
    buffered_send = WebSocketProtocol.serverSend
    queued_receive = WebSocketProtocol.onMessage
    create_application = Server.create_application
    autobahn_received = WebSocketProtocol.dataReceived

    def dataReceived(self: Any, data: bytes) -> None:  # noqa: N802  # Twisted's name
        frame = _whole_binary_frame(self, data)
        if frame is None:
            autobahn_received(self, data)
            return
        start, mask = frame
        self.trafficStats.incomingOctetsWireLevel += len(data)
        self.onMessage(create_xor_masker(mask, len(data) - start).process(data[start:]), True)

    def serverSend(self: Any, content: Any, binary: bool = False) -> None:  # noqa: N802  # Daphne's name
        if binary and _frame_and_write(self, content):
            return
        buffered_send(self, content, binary)
        transport = getattr(self, "transport", None)
        if binary and transport is not None and _writable(transport):
            transport.doWrite()

    def onMessage(self: Any, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803  # autobahn's names
        take_now = getattr(self.application_queue, "take_now", None) if isBinary and not self.muted else None
        if take_now is not None and take_now(payload):
            self.last_ping = time.time()  # what Daphne's onMessage records for its keepalive
            return
        queued_receive(self, payload, isBinary)

    def create_application_with_send_now(self: Any, protocol: Any, scope: Any) -> Any:
        queue = create_application(self, protocol, scope)
        if queue is not None and isinstance(protocol, WebSocketProtocol):
            queue.send_now = functools.partial(_send_now, self, protocol)
        return queue

    serverSend.writes_at_once = True  # type: ignore[attr-defined]
    WebSocketProtocol.serverSend = serverSend
    WebSocketProtocol.onMessage = onMessage
    WebSocketProtocol.dataReceived = dataReceived
    Server.create_application = create_application_with_send_now


def _whole_binary_frame(protocol: Any, data: bytes) -> tuple[int, bytes] | None:
    """Where the payload starts and its mask, when `data` is exactly one final, masked, uncompressed binary frame
    with a non-empty payload within the connection's limits, arriving on an open connection between messages with
    nothing buffered; None for anything else (autobahn parses it)."""
    if len(data) < 7 or data[0] != 0x82 or not data[1] & 0x80:  # 0x82: FIN, no RSV bits, opcode 2 (binary)
        return None
    if (
        protocol.state != protocol.STATE_OPEN
        or protocol.data
        or protocol.current_frame is not None
        or protocol.inside_message
        or protocol._perMessageCompress is not None
        or not protocol.applyMask
    ):
        return None
    length, start = data[1] & 0x7F, 6
    if length == 126:
        length, start = int.from_bytes(data[2:4], "big"), 8
        if length < 126:  # not the minimal encoding: a violation that autobahn reports
            return None
    elif length == 127:  # a 64-bit length: bigger than the messages this path is for
        return None
    if length == 0 or len(data) != start + length:
        return None
    if any(limit and length > limit for limit in (protocol.maxFramePayloadSize, protocol.maxMessagePayloadSize)):
        return None
    return start, data[start - 4 : start]


def _send_now(server: Any, protocol: Any, data: bytes) -> bool:
    """Send a binary message on an open connection at once (Daphne's `handle_reply` without the coroutine)."""
    connection = server.connections.get(protocol)
    if connection is None or connection.get("disconnected") or protocol.state != protocol.STATE_OPEN:
        return False
    protocol.serverSend(data, True)
    return True


def _frame_and_write(protocol: Any, payload: bytes) -> bool:
    """Frame a binary message as one unmasked final frame and write it at once, when nothing about the connection
    needs autobahn's `sendMessage` (compression, automatic fragmentation, a send queue, a message being streamed,
    octet logging, timing, a payload over the limit); False leaves the message to autobahn."""
    transport = getattr(protocol, "transport", None)
    size = len(payload)
    if (
        transport is None
        or not _writable(transport)
        or protocol.state != protocol.STATE_OPEN
        or protocol.send_state != protocol.SEND_STATE_GROUND
        or protocol.send_queue
        or protocol._perMessageCompress is not None
        or 0 < protocol.autoFragmentSize < size
        or 0 < protocol.maxMessagePayloadSize < size
        or protocol.logOctets
        or protocol.trackedTimings
    ):
        return False
    if size < 126:
        header = bytes((0x82, size))
    elif size < 1 << 16:
        header = b"\x82\x7e" + size.to_bytes(2, "big")
    else:
        header = b"\x82\x7f" + size.to_bytes(8, "big")
    _write_now(transport, header + payload)
    protocol.trafficStats.outgoingOctetsWireLevel += len(header) + size
    return True


def _write_now(transport: Any, data: bytes) -> None:
    """Send `data` on the socket now when Twisted holds nothing unsent for it (one send call: no registering with
    the reactor and unregistering again, which a relay pays on every hop); what the socket does not take, and any
    error, goes through Twisted's buffer, for the reactor to write or to report the connection lost as usual."""
    if getattr(transport, "TLS", True) or transport.dataBuffer or transport._tempDataLen:
        transport.write(data)
        transport.doWrite()
        return
    try:
        sent = transport.socket.send(data)
    except OSError:  # full (EAGAIN) or broken: the reactor finds out which when it writes the buffer
        sent = 0
    if sent < len(data):
        transport.write(data[sent:])


def _writable(transport: Any) -> bool:
    """An open TCP connection that is not closing: the reactor's doWrite finishes a close, which it must see."""
    return (
        hasattr(transport, "doWrite")
        and transport.connected
        and not transport.disconnecting
        and not getattr(transport, "_writeDisconnecting", False)
    )
