"""Autoregressive generation over the whole model or a chain of shards, with greedy or top-p sampling."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import numpy as np

from inference.runtime import ShardRuntime


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy; otherwise softmax(logits / temperature) cut to the top-p mass."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 10.0:
            raise ValueError("temperature must be between 0 and 10")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")


class Sampler:
    """Picks the next token from logits; seeded, so the same seed gives the same tokens."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray) -> int:
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        if self.params.temperature == 0.0:
            return int(np.argmax(logits))
        scaled = logits / self.params.temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, self.params.top_p) + 1)]
        kept = probs[keep] / probs[keep].sum()
        return int(keep[self._rng.choice(len(keep), p=kept)])


class Pipeline(Protocol):
    """Anything that turns new token ids of a session into the logits of the newest position."""

    def open(self, session_id: str) -> None: ...

    def forward(self, session_id: str, token_ids: Sequence[int]) -> np.ndarray: ...

    def close(self, session_id: str) -> None: ...


class LocalChain:
    """Shards in this process, run one after another (one shard covering every layer = the whole model)."""

    def __init__(self, shards: Iterable[ShardRuntime]) -> None:
        self.shards = list(shards)
        if not self.shards or not self.shards[0].spec.has_embedding or not self.shards[-1].spec.has_head:
            raise ValueError("a chain must start with the embedding shard and end with the head shard")
        for before, after in zip(self.shards, self.shards[1:], strict=False):
            if before.spec.end_layer != after.spec.first_layer:
                raise ValueError(f"{before.spec.shard_id} is not followed by {after.spec.shard_id}")

    def open(self, session_id: str) -> None:
        for shard in self.shards:
            shard.open(session_id)

    def close(self, session_id: str) -> None:
        for shard in self.shards:
            shard.close(session_id)

    def forward(self, session_id: str, token_ids: Sequence[int]) -> np.ndarray:
        data = np.asarray([token_ids], dtype=np.int64)
        for shard in self.shards:
            data = shard.step(session_id, data).output
        logits: np.ndarray = data[0]
        return logits


@dataclasses.dataclass
class Generation:
    """The result of one generation with its timings (seconds)."""

    prompt_tokens: int
    tokens: list[int]
    finish_reason: str  # "stop" (end of turn) or "length"
    prefill_seconds: float
    decode_seconds: float
    decode_steps: int  # forward passes after the prefill, one token each

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_steps / self.decode_seconds if self.decode_seconds > 0 else 0.0


def generate(
    pipeline: Pipeline,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    stop_ids: Iterable[int] = (),
    sampling: SamplingParams | None = None,
    on_token: Callable[[int], None] | None = None,
) -> Generation:
    """Prefill the prompt, then decode one token per step until a stop token or the limit."""
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    sampler = Sampler(sampling or SamplingParams())
    stops = frozenset(stop_ids)
    session_id = uuid.uuid4().hex
    pipeline.open(session_id)
    tokens: list[int] = []
    finish = "length"
    steps = 0
    try:
        started = time.perf_counter()
        logits = pipeline.forward(session_id, list(prompt_ids))
        prefilled = time.perf_counter()
        while True:
            token = sampler(logits)
            if token in stops:
                finish = "stop"
                break
            tokens.append(token)
            if on_token is not None:
                on_token(token)
            if len(tokens) >= max_new_tokens:
                break
            logits = pipeline.forward(session_id, [token])
            steps += 1
        finished = time.perf_counter()
    finally:
        pipeline.close(session_id)
    return Generation(len(prompt_ids), tokens, finish, prefilled - started, finished - prefilled, steps)
