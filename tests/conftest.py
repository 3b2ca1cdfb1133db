"""Shared by every test: the embedded market clock stays off in the test process.

The consumer and orchestrator tests talk to `config.asgi.application`, which would start the clock (auction rounds
in a thread every few seconds) on their event loops; tests that want a round call `services.clear_market()`.
The end-to-end tests' servers are separate processes with their own settings.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    from django.conf import settings

    settings.MARKET_CLOCK = False
