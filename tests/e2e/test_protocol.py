"""The provider endpoint and the buyer API against the real server: refusals, malformed frames, isolation, shards."""

from __future__ import annotations

import asyncio
import json
import re
import struct
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from inference import wire
from transport import protocol as p

pytestmark = pytest.mark.slow

HELLO = {"protocol": 1, "name": "rogue", "kind": "headless", "backend": "cpu", "slots": 1, "memory_bytes": 0}


def _ws_url(market: Any, path: str, token: str | None) -> str:
    return f"ws://127.0.0.1:{market.port}{path}" + (f"?token={token}" if token else "")


async def _refused(market: Any, token: str | None) -> tuple[dict[str, Any], int | None]:
    async with connect(_ws_url(market, "/ws/provider/", token), origin=market.url, proxy=None) as ws:
        message = json.loads(await ws.recv())
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        return message, ws.close_code


@pytest.mark.parametrize("token", [None, "not-a-token"])
def test_provider_without_a_valid_token_is_refused(market: Any, token: str | None) -> None:
    message, code = asyncio.run(_refused(market, token))
    assert message["type"] == "error" and message["code"] == "unauthorized"
    assert code == p.CLOSE_UNAUTHORIZED


def _frame(
    session: uuid.UUID,
    *,
    kind: int = 2,
    dtype: int = 1,
    shape: tuple[int, ...] = (1, 1, 576),
    payload: bytes | None = None,
) -> bytes:
    header = struct.pack(
        "<4sBBBB16sIHHI",
        b"CMTF",
        1,
        kind,
        dtype,
        len(shape),
        session.bytes,
        0,
        1,
        0,
        len(payload) if payload is not None else int(np.prod(shape)) * 2,
    )
    body = payload if payload is not None else bytes(int(np.prod(shape)) * 2)
    return header + struct.pack(f"<{len(shape)}I", *shape) + body


def _malformed(live_session: uuid.UUID) -> list[tuple[str, bytes | str, str]]:
    stranger = uuid.uuid4()
    good = _frame(stranger)
    return [
        ("truncated header", good[:20], p.BAD_FRAME),
        ("bad magic", b"XXXX" + good[4:], p.BAD_FRAME),
        ("unknown dtype", _frame(stranger, dtype=9), p.BAD_FRAME),
        ("length does not match shape", good[:-10], p.BAD_FRAME),
        ("oversize", good + bytes(wire.MAX_FRAME_BYTES), p.BAD_FRAME),
        ("step input from a provider", _frame(stranger, kind=1), p.BAD_FRAME),
        ("unknown session", good, p.UNKNOWN_SESSION),
        ("another provider's session", _frame(live_session), p.NOT_YOUR_SESSION),
        ("claims another provider's session", p.dumps(p.SESSION_OPENED, session=str(live_session)), p.NOT_YOUR_SESSION),
        ("not JSON", "{nope", p.BAD_MESSAGE),
        ("wrong field type", p.dumps(p.BENCHMARK, ns_per_layer_token="fast"), p.BAD_MESSAGE),
    ]


async def _send_malformed(market: Any, live_session: uuid.UUID) -> list[tuple[str, str, str]]:
    results = []
    async with connect(
        _ws_url(market, "/ws/provider/", market.carol), origin=market.url, proxy=None, max_size=None
    ) as ws:
        await ws.send(json.dumps({"type": "hello", **HELLO}))
        assert json.loads(await ws.recv())["type"] == "welcome"
        for what, message, expected in _malformed(live_session):
            await ws.send(message)
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            results.append((what, reply.get("code", ""), expected))
    return results


def test_malformed_frames_get_an_error_and_harm_nothing(
    market: Any, whole_model_tokens: Callable[[str, int], list[int]]
) -> None:
    market.ensure_providers(3)
    prompt = "Write a long story about a dragon."
    job = market.submit(market.alice, model="smollm2-135m", prompt=prompt, max_new_tokens=80)
    market.wait(lambda: market.api("GET", f"/api/jobs/{job['id']}/", token=market.alice)[1]["tokens"], 60, "tokens")
    _, running = market.api("GET", f"/api/jobs/{job['id']}/", token=market.alice)
    live_session = uuid.UUID(running["pipeline"][1]["session"])
    results = asyncio.run(_send_malformed(market, live_session))
    assert [(what, code) for what, code, _ in results] == [(what, expected) for what, _, expected in results]
    market.stream(job["id"], market.alice)
    _, done = market.api("GET", f"/api/jobs/{job['id']}/", token=market.alice)
    assert done["state"] == "done" and done["tokens"] == whole_model_tokens(prompt, 80)
    assert all(h["ended"] == "done" for h in done["pipeline"]), "a rogue frame disturbed the job's providers"


def test_a_buyer_never_sees_another_buyers_job(market: Any) -> None:
    market.ensure_providers(3)
    job = market.submit(market.alice, model="smollm2-135m", prompt="Hi!", max_new_tokens=4)
    assert market.api("GET", f"/api/jobs/{job['id']}/", token=market.bob)[0] == 404
    assert market.api("POST", f"/api/jobs/{job['id']}/cancel/", token=market.bob)[0] == 404
    assert market.api("GET", f"/api/jobs/{job['id']}/", token=None)[0] == 401
    assert all(j["id"] != job["id"] for j in market.api("GET", "/api/jobs/", token=market.bob)[1])
    events = market.stream(job["id"], market.bob)
    assert events == [{"type": "error", "code": "job_not_found", "message": f"job {job['id']} not found"}]
    assert market.stream(job["id"], market.alice)[-1]["type"] == "done"


def _get(market: Any, path: str, **headers: str) -> tuple[int, dict[str, str], int]:
    request = urllib.request.Request(market.url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), len(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), 0


def test_shards_download_with_etag_and_a_restarted_provider_downloads_nothing(market: Any) -> None:
    market.ensure_providers(3)
    _, models = market.api("GET", "/api/models/", token=market.carol)
    shard = models[0]["shards"][1]
    path = f"/shards/{shard['sha256']}/"
    status, headers, size = _get(market, path, Authorization=f"Token {market.carol}")
    assert status == 200 and size == shard["bytes"] and headers["ETag"] == f'"{shard["sha256"]}"'
    assert _get(market, path, Authorization=f"Token {market.carol}", **{"If-None-Match": headers["ETag"]})[0] == 304
    assert _get(market, path)[0] == 401
    assert _get(market, "/shards/" + "0" * 64 + "/", Authorization=f"Token {market.carol}")[0] == 404

    # Every provider benchmarks on the same shard when it connects, so a restarted one needs at least that shard
    # again; whatever the auction places on it next, nothing it holds may be downloaded a second time.
    name = market.alive()[0]
    before = re.findall(r"downloaded (\S+)", market.log_text(name))
    market.kill(name)
    market.start_provider(name, token=market.carol)
    market.ensure_providers(3)
    job = market.submit(market.alice, model="smollm2-135m", prompt="Hello!", max_new_tokens=8)
    market.stream(job["id"], market.alice)
    assert market.api("GET", f"/api/jobs/{job['id']}/", token=market.alice)[1]["state"] == "done"
    after = re.findall(r"downloaded (\S+)", market.log_text(name))[len(before) :]
    assert before and not set(after) & set(before), f"downloaded again after the restart: {set(after) & set(before)}"


def _wire_frame(payload: bytes, *, mask: bytes | None) -> bytes:
    """One final binary WebSocket frame as a client writes it (RFC 6455 5.2), masked unless `mask` is None."""
    assert 126 <= len(payload) < 1 << 16
    header = bytes((0x82, (0x80 if mask else 0) | 126)) + len(payload).to_bytes(2, "big")
    if mask is None:
        return header + payload
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _one_message_four_ways(market: Any) -> tuple[list[str], int | None]:
    """The same binary message sent whole (Daphne's quick path, transport/daphne_fast.py), fragmented, split across
    two TCP reads and in one write together with the next message (autobahn's path): the server must read the
    same bytes every way. Then an unmasked frame, which autobahn must refuse by closing the connection."""
    message = _frame(uuid.uuid4(), dtype=9)  # answered with an error naming the dtype code: the payload was read
    raw = _wire_frame(message, mask=b"\x11\x22\x33\x44")
    replies = []
    async with connect(_ws_url(market, "/ws/provider/", market.carol), origin=market.url, proxy=None) as ws:
        await ws.send(json.dumps({"type": "hello", **HELLO}))
        assert json.loads(await ws.recv())["type"] == "welcome"

        async def reply() -> str:
            return str(json.loads(await asyncio.wait_for(ws.recv(), 10))["message"])

        await ws.send(message)
        replies.append(await reply())
        await ws.send([message[:10], message[10:500], message[500:]])
        replies.append(await reply())
        # A whole message and the first 7 bytes of the next in one write, so one read; its reply shows that the
        # server has read those bytes, so the rest of the next comes in a read of its own.
        ws.transport.write(raw + raw[:7])
        replies.append(await reply())
        ws.transport.write(raw[7:])
        replies.append(await reply())
        ws.transport.write(raw + raw)
        replies += [await reply(), await reply()]
        ws.transport.write(_wire_frame(message, mask=None))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        return replies, ws.close_code


def test_a_binary_message_reads_the_same_whole_fragmented_or_split(market: Any) -> None:
    replies, close_code = asyncio.run(_one_message_four_ways(market))
    assert len(replies) == 6 and len(set(replies)) == 1, replies
    assert "dtype code 9" in replies[0]
    # A client's frames must be masked: autobahn fails the connection, closing it (1002) or dropping it (1006).
    assert close_code in (1002, 1006)
