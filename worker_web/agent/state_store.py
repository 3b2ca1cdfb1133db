"""The headless agent's store of the per-layer hidden states it committed to, kept to answer reveals.

Every step a provider serves, it commits to each layer's states (inference/commitment.py); a referee may ask for one
layer over a range of steps until the challenge window and any dispute are over. States of an open session stay in
memory; when the session closes they are written to one file per session (`<session>.npz`, one array per step) and
the memory is freed. Files older than the keep time (the server's `states_keep_seconds`) are deleted. No Django.
"""

from __future__ import annotations

import os
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np


class StateStore:
    def __init__(self, directory: Path, *, keep_seconds: float = 3600.0) -> None:
        self.directory = directory
        self.keep_seconds = keep_seconds
        self._open: dict[uuid.UUID, dict[int, np.ndarray]] = {}
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, session: uuid.UUID) -> Path:
        return self.directory / f"{session}.npz"

    def add(self, session: uuid.UUID, step: int, layer_hidden: np.ndarray) -> None:
        """Keep a step's layer_hidden [n_layers, S, H] (a step served again replaces its states)."""
        self._open.setdefault(session, {})[step] = layer_hidden

    def close(self, session: uuid.UUID) -> None:
        """Write a closed session's states to disk (blocking: call it off the event loop) and free the memory. The
        states stay in memory until the file is in place, so `layer` finds them all along."""
        steps = self._open.get(session)
        if steps:
            partial = self.path(session).with_suffix(f".part{os.getpid()}.npz")
            np.savez(partial, **{f"s{step}": states for step, states in steps.items()})  # type: ignore[arg-type]
            partial.rename(self.path(session))  # atomic: a crash never leaves half a file under the final name
        self._open.pop(session, None)

    def layer(self, session: uuid.UUID, first_step: int, last_step: int) -> dict[int, np.ndarray] | None:
        """Each step's layer_hidden for steps first..last of a session, from memory or disk; None if any is missing."""
        wanted = range(first_step, last_step + 1)
        held = self._open.get(session)
        if held is not None:
            return {s: held[s] for s in wanted} if all(s in held for s in wanted) else None
        try:
            with np.load(self.path(session)) as saved:
                return {s: saved[f"s{s}"] for s in wanted}
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):
            return None

    def prune(self, *, now: float | None = None) -> int:
        """Delete session files older than the keep time; returns how many went."""
        cutoff = (time.time() if now is None else now) - self.keep_seconds
        gone = 0
        for path in self.directory.glob("*.npz"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    gone += 1
            except FileNotFoundError:
                continue
        return gone
