"""transport/daphne_fast.py's write of a relayed frame, on a real socket: sent at once when nothing is buffered, and
whatever the socket does not take (a full buffer, a broken connection) handed to the transport's own buffer in
order, never lost and never raised. The whole server path runs in tests/e2e on every hop of every job."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from transport.daphne_fast import _write_now


class Transport:
    """The part of Twisted's TCP transport that `_write_now` reads (its buffers) and calls."""

    TLS = False

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.dataBuffer = b""
        self._tempDataLen = 0
        self.buffered: list[bytes] = []
        self.do_writes = 0

    def write(self, data: bytes) -> None:
        self.buffered.append(data)
        self._tempDataLen += len(data)

    def doWrite(self) -> None:  # noqa: N802  # Twisted's name
        self.do_writes += 1


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    yield ours, theirs
    ours.close()
    theirs.close()


def received(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def test_a_frame_goes_out_with_one_send_when_nothing_is_buffered(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    transport = Transport(ours)
    _write_now(transport, b"frame")
    assert received(theirs) == b"frame" and transport.buffered == [] and transport.do_writes == 0


def test_what_the_socket_does_not_take_goes_into_the_buffer_in_order(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    transport = Transport(ours)
    first, second = os.urandom(1 << 20), os.urandom(1000)
    _write_now(transport, first)  # far more than the socket buffer holds
    assert transport.buffered and 0 < len(transport.buffered[0]) < len(first)
    _write_now(transport, second)  # behind buffered data: through the buffer, never ahead of it
    assert transport.do_writes == 1
    assert received(theirs) + b"".join(transport.buffered) == first + second


def test_a_broken_connection_leaves_the_frame_to_the_transport(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.close()
    transport = Transport(ours)
    _write_now(transport, b"frame")  # the send fails (EPIPE): the reactor reports the loss when it writes the buffer
    assert transport.buffered == [b"frame"]


def test_a_tls_transport_always_takes_twisteds_path(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    transport = Transport(ours)
    transport.TLS = True
    _write_now(transport, b"frame")
    assert transport.buffered == [b"frame"] and transport.do_writes == 1 and received(theirs) == b""
