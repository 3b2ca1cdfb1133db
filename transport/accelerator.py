"""The relay's fast path, as an accelerator: picked at start-up, checked, switchable, both paths tested.

On the server it reaches into private parts of the libraries beneath us, for the provider relay's speed:
- `transport/daphne_fast.py` patches Daphne's and autobahn's WebSocket protocol and writes to Twisted's transport;
- `transport/inbox.py` takes Daphne's input queue of a connection as the consumer's inbox and offers it binary
  messages before they are queued (those two: the "server" side).
Each was written against the exact versions in `PINNED`. On the headless agent (the "agent" side),
`worker_web/agent/step_connection.py` answers decode steps in its own read callback, built on websockets' public
Sans-I/O API only: it needs no pin (`PINNED["agent"]` is empty), and RELAY_FAST_PATH=off alone turns it off.

`enabled(side)` is True only when the environment variable `RELAY_FAST_PATH` is not off ("0", "false", "no",
"off") and every library pinned for that side is installed at its pinned version; otherwise the plain path runs
(Daphne and websockets' asyncio client as they ship, each consumer reading its own queue) and one log line says
why. A library upgrade therefore turns the server's fast path off instead of breaking every WebSocket; moving a pin
means reading the patched code against the new version first. CI runs the end-to-end suite both ways, and
`bench/pipeline.py --fast-path on,off` measures both.

The in-process relay (`transport/relay.py`) uses no library internals and runs either way.
"""

from __future__ import annotations

import functools
import logging
import os
from importlib import metadata
from typing import Literal

log = logging.getLogger(__name__)

Side = Literal["server", "agent"]
SWITCH = "RELAY_FAST_PATH"
PINNED: dict[Side, dict[str, str]] = {
    "server": {"daphne": "4.2.3", "autobahn": "26.11.1", "twisted": "26.10.0", "channels": "4.3.2"},
    "agent": {},  # public API only: nothing to pin
}
_OFF = frozenset({"0", "false", "no", "off"})


@functools.cache
def enabled(side: Side) -> bool:
    """Whether `side` may take its fast path (decided once per process; `enabled.cache_clear()` asks again)."""
    if os.environ.get(SWITCH, "").strip().lower() in _OFF:
        log.info("relay fast path (%s) off: %s is set to off", side, SWITCH)
        return False
    found = {name: _installed(name) for name in PINNED[side]}
    others = {name: version for name, version in found.items() if version != PINNED[side][name]}
    if others:
        wanted = ", ".join(f"{n} {PINNED[side][n]} (found {v or 'none'})" for n, v in others.items())
        log.warning("relay fast path (%s) off: written for %s; the plain path runs", side, wanted)
        return False
    return True


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
