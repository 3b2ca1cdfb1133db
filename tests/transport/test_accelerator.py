"""The relay's fast path as an accelerator (transport/accelerator.py), and the in-process relay's rules.

The server's fast path is on only for the exact library versions it was written against, the agent's (public API
only) wherever it runs, and neither when RELAY_FAST_PATH is off; off, Daphne and websockets run as they ship. The
relay keeps a session's control messages and steps in one order and holds no more than the channel layer's capacity.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection, serve

from transport import accelerator, relay
from transport.messages import Message, ProviderClose, ProviderRoute, ProviderStep
from worker_web.agent.provider import ProviderAgent
from worker_web.agent.step_connection import StepConnection


@pytest.fixture(autouse=True)
def decide_again() -> Iterator[None]:
    accelerator.enabled.cache_clear()
    yield
    accelerator.enabled.cache_clear()


def test_the_pins_are_the_installed_versions() -> None:
    # The lock file installs exactly these; a lock that moves one must move the pin, after reading the patches.
    for side, pins in accelerator.PINNED.items():
        assert {name: accelerator._installed(name) for name in pins} == pins, side
    assert accelerator.enabled("server") and accelerator.enabled("agent")
    assert accelerator.PINNED["agent"] == {}  # the agent's connection uses websockets' public API only


@pytest.mark.parametrize("value", ["off", "0", "false", "No"])
def test_the_switch_turns_both_sides_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    monkeypatch.setenv(accelerator.SWITCH, value)
    with caplog.at_level(logging.INFO, logger=accelerator.__name__):
        assert not accelerator.enabled("server") and not accelerator.enabled("agent")
        assert not accelerator.enabled("server")  # decided once: one line per side
    assert len(caplog.records) == 2 and all(accelerator.SWITCH in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("switch", "kind"), [("on", StepConnection), ("off", ClientConnection)])
def test_the_agent_connects_with_step_connection_unless_the_switch_is_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, switch: str, kind: type
) -> None:
    monkeypatch.setenv(accelerator.SWITCH, switch)
    agent = ProviderAgent(server="http://127.0.0.1:1", token="t", name="n", slots=1, cache_dir=tmp_path)
    agent.executor.shutdown()

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async def scenario() -> type:
        async with serve(handler, "127.0.0.1", 0) as server:
            agent.server = f"http://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}"
            async with agent._connect() as ws:
                return type(ws)

    assert asyncio.run(scenario()) is kind


def test_another_version_turns_its_side_off_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(accelerator.PINNED, "server", {**accelerator.PINNED["server"], "daphne": "3.0"})
    with caplog.at_level(logging.WARNING, logger=accelerator.__name__):
        assert not accelerator.enabled("server")
        assert accelerator.enabled("agent")  # nothing pinned there
    [record] = caplog.records
    assert "daphne 3.0 (found" in record.getMessage()


PATCHED = """
import django, os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()
from daphne.ws_protocol import WebSocketProtocol
plain = WebSocketProtocol.serverSend
from transport import daphne_fast
daphne_fast.install()
print(WebSocketProtocol.serverSend is not plain, getattr(WebSocketProtocol.serverSend, "writes_at_once", False))
"""


@pytest.mark.parametrize(("switch", "patched"), [("on", "True True"), ("off", "False False")])
def test_daphne_is_patched_only_when_the_fast_path_is_on(switch: str, patched: str) -> None:
    env = {**os.environ, accelerator.SWITCH: switch}
    out = subprocess.run([sys.executable, "-c", PATCHED], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == patched


def _message(kind: type[Message], n: int) -> Message:
    """A control message or a step of session `n`."""
    if kind is ProviderStep:
        return ProviderStep(session=str(n), step=0, tokens=1, frame=b"")
    if kind is ProviderRoute:
        return ProviderRoute(session=str(n), forward=None)
    return ProviderClose(session=str(n))


class _Consumer(relay.RelayMixin):
    def __init__(self, layer: InMemoryChannelLayer, name: str) -> None:
        self.channel_layer, self.channel_name = layer, name
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.taken: list[dict[str, Any]] = []
        self.idle = True

    def take_event_now(self, event: dict[str, Any]) -> bool:
        if event["type"] == "provider.step" and self.idle and self.inbox.empty():
            self.taken.append(event)
            return True
        return False


def test_control_messages_and_steps_keep_their_order_and_the_inbox_its_capacity() -> None:
    asyncio.run(_order_and_capacity())


async def _order_and_capacity() -> None:
    layer = InMemoryChannelLayer(capacity=5)
    consumer = _Consumer(layer, await layer.new_channel())
    consumer.relay_register()
    try:
        # The consumer is busy: everything queues, in the order sent, whatever its type.
        consumer.idle = False
        for n, kind in enumerate([ProviderRoute, ProviderStep, ProviderClose]):
            assert await relay.deliver(layer, consumer.channel_name, _message(kind, n)) == "queued"
        consumer.idle = True  # idle again, but events wait: a step must not overtake them
        assert await relay.deliver(layer, consumer.channel_name, _message(ProviderStep, 3)) == "queued"
        assert [consumer.inbox.get_nowait()["session"] for _ in range(4)] == ["0", "1", "2", "3"]
        assert consumer.taken == []
        assert await relay.deliver(layer, consumer.channel_name, _message(ProviderStep, 4)) == "now"
        consumer.idle = False
        for n in range(5):  # the layer's capacity
            assert relay.has_room(consumer.channel_name)
            relay.deliver_here(consumer.channel_name, _message(ProviderStep, n).event())
        assert not relay.has_room(consumer.channel_name)
        with pytest.raises(ChannelFull):
            await relay.deliver(layer, consumer.channel_name, _message(ProviderClose, 5))
        assert consumer.inbox.qsize() == 5
    finally:
        consumer.inbox_closed()
    assert not relay.is_here(consumer.channel_name)
