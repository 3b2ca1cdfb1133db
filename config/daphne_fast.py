"""Binary WebSocket messages through Daphne without waiting for the event loop's next turns.

On the provider relay every hop of every token is one binary message in from a provider and one out to the next.
Measured with timestamps in every process, Daphne's own path cost 0.5 to 0.8 ms per hop: the message waited in
the connection's queue for its consumer's task, the consumer put the relayed frame into the next consumer's queue
for that one's task, and the frame it sent waited in Twisted's buffer for the reactor to poll the socket. Three
patches let a binary message skip those waits when nothing is queued before it; every other message, and every
binary message that arrives while its consumer is busy, takes Daphne's path unchanged.

- Receive: a consumer can hand Daphne a `take_now(payload) -> bool` on its input queue
  (`config.consumers.InboxConsumerMixin` does, for consumers that implement `receive_now`). Daphne's `onMessage`
  offers it each binary message first, in the reactor's read callback; only a refused message is queued.
- Send: `Server.create_application` puts a `send_now(data) -> bool` on each WebSocket connection's input queue,
  which sends a binary message on that connection at once from synchronous code (False when the connection is not
  open: the caller then takes the queued path, which handles a closed connection as before).
- Write: after a binary message is framed, `doWrite` runs at once: it is what the reactor would do when it next
  sees the socket writable (write what is buffered, stop watching the socket once the buffer is empty, resume a
  paused producer). What cannot be written stays buffered and registered, for the reactor to finish.
"""

from __future__ import annotations

import functools
import time
from typing import Any


def install() -> None:
    """Patch Daphne (idempotent; a no-op where Daphne is not installed)."""
    try:
        from daphne.server import Server
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:
        return
    if getattr(WebSocketProtocol.serverSend, "writes_at_once", False):
        return
    buffered_send = WebSocketProtocol.serverSend
    queued_receive = WebSocketProtocol.onMessage
    create_application = Server.create_application

    def serverSend(self: Any, content: Any, binary: bool = False) -> None:  # noqa: N802  # Daphne's name
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
    Server.create_application = create_application_with_send_now


def _send_now(server: Any, protocol: Any, data: bytes) -> bool:
    """Send a binary message on an open connection at once (Daphne's `handle_reply` without the coroutine)."""
    connection = server.connections.get(protocol)
    if connection is None or connection.get("disconnected") or protocol.state != protocol.STATE_OPEN:
        return False
    protocol.serverSend(data, True)
    return True


def _writable(transport: Any) -> bool:
    """An open TCP connection that is not closing: the reactor's doWrite finishes a close, which it must see."""
    return (
        hasattr(transport, "doWrite")
        and transport.connected
        and not transport.disconnecting
        and not getattr(transport, "_writeDisconnecting", False)
    )
