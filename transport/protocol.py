"""The provider protocol's JSON control messages, shared by the server's consumer and the headless agent.

docs/protocol.md is the readable version. Tensors never travel as JSON: they are binary frames
(inference/wire.py). This module imports nothing from Django, so the agent can run without the server's code.
"""

from __future__ import annotations

import json
from typing import Any

from inference import boundedjson
from inference.challenge import MAX_DECODE_STEPS, MAX_PROMPT_POSITIONS, SEED_BITS, Challenge

PROTOCOL_VERSION = 1

# Close codes (4000-4999 are the application's own).
CLOSE_UNAUTHORIZED = 4401
CLOSE_PROTOCOL = 4400  # sent after a failed benchmark (error `benchmark_failed`)
CLOSE_REPLACED = 4409  # the same provider connected again; the older connection is closed

# provider -> server
HELLO = "hello"
# The benchmark (docs/protocol.md): after the welcome the provider loads its benchmark shard and says
# BENCHMARK_READY {shard_id}; the server answers BENCHMARK_CHALLENGE {shard_id, seed, prompt, steps} and times the
# provider's BENCHMARK {shard_id, ns_per_layer_token (its own figure, kept as its claim), answer (base64 float32 of
# the last step's output)}, checks the answer and confirms with BENCHMARKED, or fails it (BENCHMARK_FAILED).
BENCHMARK_READY = "benchmark_ready"
BENCHMARK = "benchmark"
SHARD_LOADED = "shard_loaded"
SESSION_OPENED = "session_opened"
HEARTBEAT = "heartbeat"
ERROR = "error"
# Commitments to per-layer hidden states, sent after the outputs they cover: {"commits": [[session, step, root]]}
# (inference/commitment.py says how a root is made). At most COMMITS_PER_MESSAGE entries per message.
COMMIT = "commit"
COMMITS_PER_MESSAGE = 256
# Commitments travel in batches, never one message per step: a provider sends them once COMMIT_BATCH_STEPS steps
# are waiting, after COMMIT_IDLE_SECONDS without a full batch, before it answers a reveal, and when a session
# closes (the server takes them up to LATE_COMMIT_SECONDS after the close). Each message costs the server a pass
# through its consumer on the same loop that relays the steps.
COMMIT_BATCH_STEPS = 16
COMMIT_IDLE_SECONDS = 0.25
# The answer to a reveal: first one binary frame of type REVEAL per step (session, step, shard field = the layer's
# index in the shard, float32 [S, H]), then {"request", "session", "layer", "proofs": [proof per step]}.
REVEALED = "revealed"
# server -> provider
WELCOME = "welcome"
BENCHMARK_CHALLENGE = "benchmark_challenge"
BENCHMARKED = "benchmarked"  # {shard_id, ns_per_layer_token: what the server measured, claimed_ns_per_layer_token}
LOAD_SHARD = "load_shard"
OPEN_SESSION = "open_session"
# What a head shard's step output holds (open_session's `head_output`): the float32 logits of the last position,
# or, for a greedy job, only their argmax as an int64 [1, 1] (the first index of the largest value, like numpy):
# 8 bytes on the wire instead of 4 × vocab, and the same token.
HEAD_LOGITS = "logits"
HEAD_ARGMAX = "argmax"
HEAD_OUTPUTS = (HEAD_LOGITS, HEAD_ARGMAX)
CLOSE_SESSION = "close_session"
# Open one layer's committed states for steps first_step..last_step: {"request", "session", "layer", "first_step",
# "last_step"}. The provider keeps its states for `states_keep_seconds` (in the welcome) after a session closes.
REVEAL = "reveal"

# What one provider agent may announce in its hello. The auction places jobs' KV caches by `memory_bytes` and runs
# up to `slots` sessions at once: a provider claiming 10^15 bytes would be handed every job of the book.
MAX_SLOTS = 64
MAX_MEMORY_BYTES = 2**40  # 1 TiB
MAX_NAME_CHARS = 100  # longer names are cut
MAX_ASK = 10**9  # base units per layer-token

KINDS = ("headless", "browser")
BACKENDS = ("cpu", "wasm", "webgpu")

# Error codes either side may send.
BAD_FRAME = "bad_tensor_frame"
BAD_MESSAGE = "bad_message"
DUPLICATE_HELLO = "duplicate_hello"
UNKNOWN_SESSION = "unknown_session"
NOT_YOUR_SESSION = "not_your_session"
UNEXPECTED_STEP = "unexpected_step"
SHARD_FAILED = "shard_failed"
STEP_FAILED = "step_failed"
NO_STATES = "no_states"  # a reveal asks for states the provider does not hold (it names the request)
BENCHMARK_FAILED = "benchmark_failed"  # the benchmark was not answered, or not right: the server closes (4400)
DUPLICATE_BENCHMARK = "duplicate_benchmark"  # a second benchmark_ready: one challenge per connection


class ProtocolError(Exception):
    """A control message that cannot be accepted; `code` is one of the error codes above."""

    def __init__(self, message: str, *, code: str = BAD_MESSAGE) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def dumps(message_type: str, /, **fields: Any) -> str:
    return json.dumps({"type": message_type, **fields}, separators=(",", ":"))


def loads(text: str) -> dict[str, Any]:
    """Parse a control message: a JSON object with a string `type`, else ProtocolError."""
    try:
        message = boundedjson.loads(text)
    except boundedjson.TooDeep as exc:
        raise ProtocolError(str(exc)) from None
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError('a control message is a JSON object with a string "type"')
    return message


def field(
    message: dict[str, Any], name: str, kind: type, *, low: float | None = None, high: float | None = None
) -> Any:
    """One typed field of a message, with bounds for numbers; ProtocolError names what is wrong."""
    value: Any = message.get(name)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ProtocolError(f'"{message.get("type")}" needs "{name}" as {kind.__name__}, got {value!r}')
    checked: Any = value  # isinstance against a runtime type narrows to `object`; the bounds apply to numbers
    if low is not None and checked < low or high is not None and checked > high:
        raise ProtocolError(f'"{name}" must be between {low} and {high}, got {value!r}')
    return checked


def hello_fields(message: dict[str, Any]) -> dict[str, Any]:
    """The capacity a provider announces, checked: what `provider_connect` stores."""
    if message.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol {message.get('protocol')!r} is not spoken here (this server speaks 1)")
    kind = field(message, "kind", str)
    backend = field(message, "backend", str)
    if kind not in KINDS or backend not in BACKENDS:
        raise ProtocolError(f"kind must be one of {KINDS} and backend one of {BACKENDS}")
    return {
        "name": field(message, "name", str)[:MAX_NAME_CHARS] or "provider",
        "kind": kind,
        "backend": backend,
        "slots": field(message, "slots", int, low=1, high=MAX_SLOTS),
        "memory_bytes": field(message, "memory_bytes", int, low=0, high=MAX_MEMORY_BYTES),
        # Its own ask per layer-token (optional; the platform's figure is the default and the floor).
        "posted_ask": None if message.get("ask") is None else field(message, "ask", int, low=1, high=MAX_ASK),
    }


def challenge_message(challenge: Challenge, *, shard_id: str) -> str:
    """The server's challenge on the benchmark shard."""
    return dumps(
        BENCHMARK_CHALLENGE, shard_id=shard_id, seed=challenge.seed, prompt=challenge.prompt, steps=challenge.steps
    )


def challenge_fields(message: dict[str, Any]) -> Challenge:
    """A challenge as a provider accepts it: a seed JavaScript holds exactly, and no more work than it agrees to."""
    return Challenge(
        seed=field(message, "seed", int, low=0, high=2**SEED_BITS - 1),
        prompt=field(message, "prompt", int, low=1, high=MAX_PROMPT_POSITIONS),
        steps=field(message, "steps", int, low=1, high=MAX_DECODE_STEPS),
    )
