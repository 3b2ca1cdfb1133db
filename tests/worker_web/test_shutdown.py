"""A server stopped with SIGTERM takes the providers connected to it offline before it exits (a real Daphne on the
embedded profile, a provider connection from a real WebSocket client)."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.typing import Origin

from market.localstack import LocalMarket

HELLO = {
    "type": "hello",
    "protocol": 1,
    "name": "box",
    "kind": "headless",
    "backend": "cpu",
    "slots": 1,
    "memory_bytes": 0,
}


def provider_states(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT state, channel_name FROM market_provider"))


def test_a_server_stopped_with_sigterm_takes_its_providers_offline(tmp_path: Path) -> None:
    db = tmp_path / "market.sqlite3"
    env = {"DATABASE_URL": f"sqlite:///{db}", "MEDIA_ROOT": str(tmp_path / "media"), "MARKET_CLOCK": "false"}
    market = LocalMarket(env=env, logs=tmp_path / "logs")
    market.manage("migrate", "--noinput", "-v0")
    token = market.manage("issue_token", "prov", "--create")
    market.start_server()

    async def scenario() -> None:
        url = f"ws://127.0.0.1:{market.port}/ws/provider/?token={token}"
        async with connect(url, origin=Origin(market.url), proxy=None) as ws:
            await ws.send(json.dumps(HELLO))
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert welcome["type"] == "welcome", welcome
            [(state, channel)] = provider_states(db)
            assert state == "online" and channel
            market.kill("server", signal.SIGTERM)  # waits for the process to exit
            [(state, channel)] = provider_states(db)
            assert (state, channel) == ("offline", ""), "the stopping server left its provider online"

    try:
        asyncio.run(scenario())
    finally:
        market.stop()
