"""Shared by every test: the embedded market clock stays off in the test process, and a test that loads the real
model must be marked `slow`.

The consumer and orchestrator tests talk to `config.asgi.application`, which would start the clock (auction rounds
in a thread every few seconds) on their event loops; tests that want a round call `services.clear_market()`.
The end-to-end tests' servers are separate processes with their own settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ledger.chain.anvil import AnvilNode


def pytest_configure(config: pytest.Config) -> None:
    from django.conf import settings

    settings.MARKET_CLOCK = False
    # The rate limits count in the cache: this process's own, emptied before each test (fresh_rate_limits), on
    # either profile. Clearing a Redis cache would empty the whole Redis database, channel layer included.
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


@pytest.fixture(autouse=True)
def fresh_rate_limits() -> None:
    """Each test starts with no requests counted against any rate limit."""
    from django.core.cache import cache

    cache.clear()


REAL_MODEL_FIXTURES = {"real_model", "real_tokenizer", "real_chain"}  # tests/inference/conftest.py
E2E = Path(__file__).parent / "e2e"  # every end-to-end test serves the real model


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that loads the real model is marked `slow` (so `-m "not slow"` leaves none of them): a test that
    takes a real-model fixture or lives in tests/e2e without the mark stops the run here, naming it."""
    unmarked = [
        item.nodeid
        for item in items
        if item.get_closest_marker("slow") is None
        and (REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) or item.path.is_relative_to(E2E))
    ]
    if unmarked:
        raise pytest.UsageError(f"mark these tests @pytest.mark.slow (they load the real model): {unmarked}")


@pytest.fixture(autouse=True)
def fresh_channel_layer() -> Iterator[None]:
    """Every test gets its own channel layer instance. Async tests each run on their own event loop, and
    channels_redis binds a layer's receive lock to the loop that first receives: a layer shared across tests
    failed now and then with "bound to a different event loop" on the full profile."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def chain_node(tmp_path: Path, settings: Any) -> Iterator[AnvilNode]:
    """A fresh Anvil from node_modules (its state kept in a file, so a restart keeps the chain) that the market's
    settings point at, with a small minimum stake. The market deploys its contracts there on first use."""
    from ledger.chain import bridge
    from ledger.chain.anvil import AnvilNode

    with AnvilNode(state=tmp_path / "anvil-state.json", log=tmp_path / "anvil.log") as node:
        settings.CHAIN_RPC_URL = node.url
        settings.CHAIN_MIN_STAKE = 1_000
        bridge.forget()
        yield node
    bridge.forget()
