"""Waiting in tests: on the event itself, with a deadline, never for a fixed time.

A test that sleeps and then asserts fails on a slow machine and hides a slow feature on a fast one. Wait on what
the code does instead: a message received (`receive_json_from(timeout=...)`, `asyncio.wait_for`), an
`asyncio.Event` or queue the test's fake sets, or, where the only witness is the database, `until`, which polls a
condition and fails with what it waited for once the deadline passes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

POLL_SECONDS = 0.02  # between two looks at the condition: short against any deadline a test sets


async def until(check: Callable[[], Awaitable[T | None]], *, what: str, timeout: float = 10) -> T:
    """Await `check()` until it returns something true, and return it; after `timeout` seconds fail naming `what`
    (with the last value seen)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout} s for {what} (last seen: {value!r})")
        await asyncio.sleep(POLL_SECONDS)
