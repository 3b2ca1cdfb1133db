"""The agent's StepConnection against a real websockets server on loopback: message order around `take_now`,
fragments, pings, closes, a refused handshake, the size limit, and `send_now` beside a send that waits."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.typing import Origin

from worker_web.agent.step_connection import StepConnection, open_connection

WAIT = 5.0  # seconds: any wait below that runs longer has failed


def _run(
    handler: Callable[[ServerConnection], Awaitable[None]], client: Callable[[str], Awaitable[None]], **options: Any
) -> None:
    """Serve `handler` on 127.0.0.1 (with websockets' `serve` options) and run `client(url)` against it."""

    async def scenario() -> None:
        async with serve(handler, "127.0.0.1", 0, max_size=None, **options) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            await asyncio.wait_for(client(f"ws://127.0.0.1:{port}/ws/provider/"), WAIT * 2)

    asyncio.run(scenario())


async def _all(connection: StepConnection) -> list[str | bytes]:
    return [message async for message in connection]


def test_a_refused_message_holds_every_later_one_behind_it_for_the_reader() -> None:
    """take_now takes what starts with b"take" only while nothing waits for the reader: after the first refusal
    every message, text, fragmented or binary, waits in arrival order, and the iteration ends with the close."""

    async def handler(ws: ServerConnection) -> None:
        assert await ws.recv() == "ready"  # take_now is set
        sent: list[str | bytes | list[bytes]] = [b"take-1", b"keep-2", b"take-3", "text-4", [b"take-5a", b"take-5b"]]
        for message in [*sent, b"take-6"]:  # the list: one message in two frames
            await ws.send(message)
        await ws.close(1000, "done")

    async def client(url: str) -> None:
        connection = await open_connection(url, max_size=None)
        taken: list[bytes] = []

        def take_now(data: bytes) -> bool:
            if data.startswith(b"take"):
                taken.append(data)
                return True
            return False

        connection.take_now = take_now
        await connection.send("ready")
        await asyncio.wait_for(asyncio.shield(connection.lost), WAIT)  # everything read before the reader starts
        assert taken == [b"take-1"]
        assert await _all(connection) == [b"keep-2", b"take-3", "text-4", b"take-5atake-5b", b"take-6"]
        assert (connection.close_code, connection.close_reason) == (1000, "done")

    _run(handler, client)


def test_take_now_is_offered_again_once_the_reader_took_everything() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(b"keep-1")
        assert await ws.recv() == "next"
        await ws.send(b"take-2")
        assert await ws.recv() == "bye"

    async def client(url: str) -> None:
        connection = await open_connection(url, max_size=None)
        taken: asyncio.Queue[bytes] = asyncio.Queue()

        def take_now(data: bytes) -> bool:
            if data.startswith(b"take"):
                taken.put_nowait(data)
                return True
            return False

        connection.take_now = take_now
        assert await connection.recv() == b"keep-1"
        await connection.send("next")
        assert await asyncio.wait_for(taken.get(), WAIT) == b"take-2"
        await connection.send("bye")
        await connection.close()
        assert connection.close_code == 1000

    _run(handler, client)


def test_a_ping_is_answered_while_the_reader_is_busy() -> None:
    latencies: list[float] = []

    async def handler(ws: ServerConnection) -> None:
        latencies.append(await asyncio.wait_for(await ws.ping(b"are you there"), WAIT))
        await ws.send("after the ping")

    async def client(url: str) -> None:
        connection = await open_connection(url, max_size=None)
        await asyncio.wait_for(asyncio.shield(connection.lost), WAIT)  # nobody reads: the callback answers
        assert await _all(connection) == ["after the ping"]

    _run(handler, client)
    assert len(latencies) == 1 and latencies[0] >= 0


def test_a_close_with_4401_ends_the_iteration_with_that_code() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send('{"type": "error", "code": "unauthorized"}')
        await ws.close(4401, "unauthorized")

    async def client(url: str) -> None:
        connection = await open_connection(url, max_size=None)
        received: list[str | bytes] = []
        with pytest.raises(ConnectionClosedError):  # not a normal close: as websockets' own connection reports it
            async for message in connection:
                received.append(message)
        assert received == ['{"type": "error", "code": "unauthorized"}']
        assert (connection.close_code, connection.close_reason) == (4401, "unauthorized")
        assert not connection.send_now(b"too late")
        with pytest.raises(ConnectionClosedError):
            await connection.send("too late")

    _run(handler, client)


def test_a_refused_handshake_raises_invalid_status_with_the_servers_response() -> None:
    def refuse(connection: ServerConnection, request: Any) -> Any:
        assert request.headers["Authorization"] == "Token secret" and request.headers["Origin"] == "http://market"
        return connection.respond(http.HTTPStatus.FORBIDDEN, "no\n")

    async def handler(ws: ServerConnection) -> None:
        raise AssertionError("the handshake was refused: no connection to handle")

    async def client(url: str) -> None:
        with pytest.raises(InvalidStatus) as refused:
            await open_connection(
                url, origin=Origin("http://market"), additional_headers={"Authorization": "Token secret"}
            )
        assert refused.value.response.status_code == 403

    _run(handler, client, process_request=refuse)


def test_a_message_over_the_size_limit_fails_the_connection() -> None:
    closed: list[int | None] = []

    async def handler(ws: ServerConnection) -> None:
        await ws.send(b"x" * 1000)
        await ws.send(b"y" * 1001)
        try:
            await ws.recv()
        except ConnectionClosedError:
            closed.append(ws.close_code)

    async def client(url: str) -> None:
        connection = await open_connection(url, max_size=1000)
        received: list[str | bytes] = []
        with pytest.raises(ConnectionClosedError):
            async for message in connection:
                received.append(message)
        assert received == [b"x" * 1000]

    _run(handler, client)
    assert closed == [1009]  # message too big


def test_send_now_goes_out_whole_after_a_send_that_waits_for_the_socket() -> None:
    big, small = bytes(range(256)) * (1 << 17), b"answer"  # 32 MiB: more than the socket takes at once

    async def handler(ws: ServerConnection) -> None:
        first, second = await ws.recv(), await ws.recv()
        assert isinstance(first, bytes)
        await ws.send(hashlib.sha256(first).hexdigest())
        await ws.send(second)

    async def client(url: str) -> None:
        connection = await open_connection(url, max_size=None)
        sending = asyncio.ensure_future(connection.send(big))
        await asyncio.sleep(0)  # one turn of the loop: the send has written what the socket took, and waits
        assert not sending.done() and connection.writing_paused
        assert connection.send_now(small)
        await asyncio.wait_for(sending, WAIT)
        assert await connection.recv() == hashlib.sha256(big).hexdigest()
        assert await connection.recv() == small
        await connection.close()

    _run(handler, client)


def test_a_server_that_stops_answering_pings_fails_the_connection() -> None:
    """Keepalive: a server that completed the handshake and then reads nothing (no pong) is given up on with 1011
    after ping_timeout, and its TCP connection dropped after close_timeout."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
        writer.write(b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        while await reader.read(1 << 16):  # read and never answer, until the client drops the connection
            pass
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        async with server:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
            connection = await open_connection(url, ping_interval=0.05, ping_timeout=0.1, close_timeout=0.2)
            with pytest.raises(ConnectionClosedError) as closed:
                await asyncio.wait_for(connection.recv(), WAIT)
            assert closed.value.sent is not None and closed.value.sent.code == 1011 and closed.value.rcvd is None

    asyncio.run(scenario())
