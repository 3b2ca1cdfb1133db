"""The headless agent's store of committed states (worker_web/agent/state_store.py): kept per (session, step) while the
session is open, written to one file and dropped from memory when it closes, read back bit for bit, deleted after
the keep time; anything missing is None (the agent then answers a reveal with no_states)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from inference import commitment
from worker_web.agent.state_store import StateStore

N_LAYERS, HIDDEN = 4, 8


def states(step: int, seq: int = 1) -> np.ndarray:
    """A step's layer_hidden [n_layers, S, H], different for every step."""
    return np.random.default_rng(step).standard_normal((N_LAYERS, seq, HIDDEN)).astype(np.float32)


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "states", keep_seconds=100.0)


def test_an_open_sessions_states_are_read_from_memory_per_step(store: StateStore) -> None:
    session, other = uuid.uuid4(), uuid.uuid4()
    for step in range(3):
        store.add(session, step, states(step, seq=5 if step == 0 else 1))
    store.add(other, 0, states(99))
    held = store.layer(session, 0, 2)
    assert held is not None and sorted(held) == [0, 1, 2]
    for step in range(3):
        assert np.array_equal(held[step], states(step, seq=5 if step == 0 else 1))
    assert store.layer(session, 1, 1) is not None and sorted(store.layer(session, 1, 1) or {}) == [1]
    other_held = store.layer(other, 0, 0)
    assert other_held is not None and np.array_equal(other_held[0], states(99)), "sessions are kept apart"
    assert list(store.directory.iterdir()) == [], "nothing is written while the session is open"


def test_a_step_served_again_replaces_its_states(store: StateStore) -> None:
    session = uuid.uuid4()
    store.add(session, 0, states(0))
    store.add(session, 0, states(7))
    held = store.layer(session, 0, 0)
    assert held is not None and np.array_equal(held[0], states(7))


def test_closing_writes_one_file_frees_the_memory_and_reads_back_bit_for_bit(store: StateStore) -> None:
    session = uuid.uuid4()
    written = {step: states(step, seq=4 if step == 0 else 1) for step in range(3)}
    written[1][2, 0, 0] = -0.0  # bytes, not values, are committed: -0.0 must come back as -0.0
    for step, layer_hidden in written.items():
        store.add(session, step, layer_hidden)
    store.close(session)
    assert [p.name for p in store.directory.iterdir()] == [f"{session}.npz"], "no partial file left behind"
    held = store.layer(session, 0, 2)
    assert held is not None
    for step, layer_hidden in written.items():
        assert held[step].dtype == np.float32 and held[step].tobytes() == layer_hidden.tobytes()
        # What the agent proves from the file opens the commitment it sent from memory.
        root = commitment.commit(layer_hidden)
        assert commitment.verify(held[step][2], commitment.proof(commitment.leaves(held[step]), 2), root)
    store.path(session).unlink()
    assert store.layer(session, 0, 2) is None, "after close the states live only on disk"


def test_a_store_opened_again_on_the_directory_reads_what_an_earlier_one_wrote(tmp_path: Path) -> None:
    """The agent restarted between the job and the reveal: the file is all there is."""
    session = uuid.uuid4()
    first = StateStore(tmp_path / "states")
    first.add(session, 0, states(0))
    first.close(session)
    held = StateStore(tmp_path / "states").layer(session, 0, 0)
    assert held is not None and np.array_equal(held[0], states(0))


def test_closing_a_session_with_nothing_kept_writes_nothing(store: StateStore) -> None:
    store.close(uuid.uuid4())
    assert list(store.directory.iterdir()) == []


@pytest.mark.parametrize("closed", [False, True])
def test_missing_states_are_none(store: StateStore, closed: bool) -> None:
    session = uuid.uuid4()
    store.add(session, 0, states(0))
    store.add(session, 2, states(2))
    if closed:
        store.close(session)
    assert store.layer(session, 0, 2) is None, "step 1 was never kept"
    assert store.layer(session, 0, 3) is None, "a step beyond the last"
    assert store.layer(uuid.uuid4(), 0, 0) is None, "a session never seen"
    assert store.layer(session, 2, 2) is not None


def test_a_damaged_file_is_missing_states_not_a_crash(store: StateStore) -> None:
    session = uuid.uuid4()
    store.add(session, 0, states(0))
    store.close(session)
    store.path(session).write_bytes(b"not a zip file")
    assert store.layer(session, 0, 0) is None
    store.path(session).write_bytes(b"PK\x03\x04 cut short")
    assert store.layer(session, 0, 0) is None


def test_an_empty_file_is_missing_states_not_a_crash(store: StateStore) -> None:
    session = uuid.uuid4()
    store.add(session, 0, states(0))
    store.close(session)
    store.path(session).write_bytes(b"")
    assert store.layer(session, 0, 0) is None


def _closed(store: StateStore, age_seconds: float, now: float) -> uuid.UUID:
    """A session closed `age_seconds` before `now` (its file's mtime set so)."""
    session = uuid.uuid4()
    store.add(session, 0, states(0))
    store.close(session)
    os.utime(store.path(session), (now - age_seconds, now - age_seconds))
    return session


def test_prune_deletes_only_files_older_than_the_keep_time(store: StateStore) -> None:
    now = time.time()
    old, older, fresh = _closed(store, 101, now), _closed(store, 5_000, now), _closed(store, 99, now)
    assert store.prune(now=now) == 2
    assert store.layer(old, 0, 0) is None and store.layer(older, 0, 0) is None
    assert store.layer(fresh, 0, 0) is not None
    assert store.prune(now=now) == 0, "pruning again deletes nothing more"
    assert store.prune(now=now + 2) == 1, "the fresh one once its time is up"
    assert list(store.directory.iterdir()) == []


def test_prune_follows_the_keep_time_the_server_sends(store: StateStore) -> None:
    now = time.time()
    session = _closed(store, 150, now)
    store.keep_seconds = 200.0  # the welcome's states_keep_seconds (worker_web/agent/provider.py)
    assert store.prune(now=now) == 0 and store.layer(session, 0, 0) is not None
    store.keep_seconds = 100.0
    assert store.prune(now=now) == 1


def test_prune_leaves_open_sessions_and_other_files_alone(store: StateStore) -> None:
    now = time.time()
    session = uuid.uuid4()
    store.add(session, 0, states(0))
    keep = store.directory / "notes.txt"
    keep.write_text("not a session")
    os.utime(keep, (now - 10_000, now - 10_000))
    assert store.prune(now=now + 10_000) == 0
    assert keep.exists() and store.layer(session, 0, 0) is not None


def test_prune_without_a_clock_uses_the_time_now(store: StateStore) -> None:
    now = time.time()
    _closed(store, 1_000, now)
    _closed(store, 1, now)
    assert store.prune() == 1
