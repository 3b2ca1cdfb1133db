"""The benchmark challenge: a provider's speed measured on inputs the server chose, with the answer checked.

The server sends a fresh random `seed`; every input of the run follows from it through a small counter hash that
the provider tab implements identically in JavaScript (worker_web/static/worker_web/challenge.js): murmur3's
32-bit finaliser over (seed, step, element index), all arithmetic modulo 2^32. A run is one session of the shard:
step 0 is a prompt of `prompt` positions, steps 1..`steps` one position each, and the answer is the float32 output
of the last step. Through attention that output depends on every input before it, so it cannot be produced without
running every step, nor before the seed is known (docs/protocol.md, "The benchmark").

Values: hidden states are multiples of 2^-22 in [-2, 2), exactly representable in float32 (and in a JavaScript
double), so both sides feed the shard the same bits; token ids are the hash modulo the vocabulary.
"""

from __future__ import annotations

import base64
import dataclasses
import statistics
import time
import uuid
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # only the type: the wire protocol imports this module without ONNX Runtime
    from inference.runtime import ShardRuntime

PROMPT_POSITIONS = 8
DECODE_STEPS = 32
SEED_BITS = 53  # a JSON number JavaScript holds exactly
MAX_PROMPT_POSITIONS = 64  # what a provider agrees to run at most (a server could otherwise ask for anything)
MAX_DECODE_STEPS = 256

_M1, _M2, _GOLDEN = 0x85EBCA6B, 0xC2B2AE35, 0x9E3779B9
_SCALE = np.float32(2.0**-22)  # 24 random bits, centred: [-2^23, 2^23) × 2^-22 = [-2, 2)


@dataclasses.dataclass(frozen=True)
class Challenge:
    """What the server asks: the seed of every input, the prompt's positions and the decode steps after it."""

    seed: int
    prompt: int = PROMPT_POSITIONS
    steps: int = DECODE_STEPS


@dataclasses.dataclass
class Result:
    """A run's answer (the last step's output, float32, flattened) and the decode steps' own times."""

    answer: np.ndarray
    step_ns: list[int]

    def ns_per_layer_token(self, layers: int) -> int:
        """The provider's own figure: the median decode step per layer (its claim; the server times the run)."""
        return max(1, int(statistics.median(self.step_ns) / max(1, layers)))


def _fmix(h: np.ndarray) -> np.ndarray:
    """murmur3's finaliser on uint32 values (numpy's uint32 arrays wrap modulo 2^32, like Math.imul)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(_M1)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(_M2)
    mixed: np.ndarray = h ^ (h >> np.uint32(16))
    return mixed


def _step_key(seed: int, step: int) -> np.ndarray:
    """One uint32 per (seed, step): the seed's low and high words mixed, then the step."""
    lo = np.array([seed & 0xFFFFFFFF], dtype=np.uint32)
    hi = np.array([(seed >> 32) & 0xFFFFFFFF], dtype=np.uint32)
    key = _fmix(lo ^ _fmix(hi ^ np.uint32(_GOLDEN)))
    return _fmix(key ^ np.array([((step + 1) * _M1) & 0xFFFFFFFF], dtype=np.uint32))


def words(seed: int, step: int, count: int) -> np.ndarray:
    """`count` uint32 words of step `step`: fmix(key + index × golden ratio), index 0..count-1."""
    index = np.arange(count, dtype=np.uint32)
    return _fmix(_step_key(seed, step) + index * np.uint32(_GOLDEN))


def step_input(seed: int, step: int, *, positions: int, hidden: int, vocab: int, has_embedding: bool) -> np.ndarray:
    """The input of one step: token ids int64 [1, positions] for a shard with the embedding, float32 hidden states
    [1, positions, hidden] otherwise (elements in C order)."""
    if has_embedding:
        return (words(seed, step, positions) % np.uint32(vocab)).astype(np.int64).reshape(1, positions)
    raw = words(seed, step, positions * hidden)
    centred = (raw >> np.uint32(8)).astype(np.int32) - np.int32(1 << 23)
    return (centred.astype(np.float32) * _SCALE).reshape(1, positions, hidden)


def inputs(challenge: Challenge, runtime: ShardRuntime) -> list[np.ndarray]:
    """Every step's input for this shard: the prompt, then one position per decode step."""
    config, embedding = runtime.config, runtime.spec.has_embedding
    return [
        step_input(
            challenge.seed,
            step,
            positions=challenge.prompt if step == 0 else 1,
            hidden=config.hidden,
            vocab=config.vocab,
            has_embedding=embedding,
        )
        for step in range(challenge.steps + 1)
    ]


def run(runtime: ShardRuntime, challenge: Challenge) -> Result:
    """Run the challenge in a fresh session of the shard (closed again afterwards): blocking, call it in a thread."""
    session = f"challenge-{uuid.uuid4().hex}"
    fed = inputs(challenge, runtime)
    runtime.open(session)
    try:
        output = runtime.step(session, fed[0]).output
        times = []
        for tensor in fed[1:]:
            started = time.perf_counter_ns()
            output = runtime.step(session, tensor).output
            times.append(time.perf_counter_ns() - started)
    finally:
        runtime.close(session)
    return Result(answer=np.ascontiguousarray(output, dtype=np.float32).reshape(-1), step_ns=times)


def answer_size(*, hidden: int, vocab: int, has_head: bool) -> int:
    """How many float32 values the answer holds: the logits of a head shard, else one position's hidden state."""
    return vocab if has_head else hidden


def encode_answer(answer: np.ndarray) -> str:
    """Base64 of the answer's float32 values, little-endian."""
    return base64.b64encode(np.ascontiguousarray(answer, dtype="<f4").tobytes()).decode("ascii")


def decode_answer(text: str, size: int) -> np.ndarray | None:
    """The answer's float32 values, or None when the text is not base64 of exactly `size` of them. The length is
    checked before anything is decoded, so an oversized answer costs nothing."""
    if len(text) != 4 * ((4 * size + 2) // 3):
        return None
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    if len(data) != 4 * size:
        return None
    return np.frombuffer(data, dtype="<f4").astype(np.float32)
