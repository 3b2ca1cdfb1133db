"""The server's side of the benchmark challenge (docs/protocol.md, "The benchmark").

Each connection gets one challenge with a fresh seed from the OS. The server times it itself, from sending the
challenge to receiving the answer, and checks the answer against its own run of the same shard (its stored file, the
bytes it serves), judged by the hop tolerance the referee uses for one hop's output against a re-execution
(verification/tolerance.py). The provider's own figure is kept as its claim and never priced.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from channels.db import database_sync_to_async
from django.conf import settings
from django.core.files.storage import default_storage

from inference import challenge
from inference.runtime import ShardRuntime
from market import services
from market.models import Shard
from transport import protocol as p
from verification import tolerance

log = logging.getLogger(__name__)

RUNTIMES_KEPT = 2  # loaded benchmark shards kept in this process (the newest model's, and the one before)
# One thread computes every reference of this process, off the event loop and one at a time: a burst of connecting
# providers costs the server one core, never all of them.
_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="benchmark-referee")
_RUNTIMES: dict[str, ShardRuntime] = {}  # by SHA-256: content never changes under it
_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Pending:
    """A challenge sent on a connection and not answered yet: on which shard, and when (time.monotonic_ns())."""

    shard: dict[str, Any]  # the welcome's shard descriptor
    challenge: challenge.Challenge
    sent_ns: int

    @property
    def layers(self) -> int:
        return int(self.shard["end_layer"]) - int(self.shard["first_layer"])

    def measured(self, received_ns: int) -> int:
        """ns per layer-token as the server timed it: the whole exchange (the prompt's positions, the round trip and
        the answer's transfer included) over the decode steps' layer-tokens."""
        return max(1, (received_ns - self.sent_ns) // (self.layers * self.challenge.steps))


def new_challenge() -> challenge.Challenge:
    """A challenge nobody can have seen: the seed comes from the OS's randomness, fresh for every connection."""
    return challenge.Challenge(seed=secrets.randbits(challenge.SEED_BITS))


async def verdict(pending: Pending, *, shard_id: str, answer: str, path: str) -> tuple[str | None, float]:
    """(Why the answer fails, or None when it is the shard's output for this challenge; how far it is from the
    server's, in tolerances). The answer's size is checked before it is decoded, and the reference runs in the
    referee thread on `path`, the server's copy of the shard."""
    shard = pending.shard
    if shard_id != shard["id"]:
        return f"the challenge was on {shard['id']}, not on {shard_id[:160]!r}", float("inf")
    size = challenge.answer_size(hidden=int(shard["hidden"]), vocab=int(shard["vocab"]), has_head=shard["has_head"])
    values = challenge.decode_answer(answer, size)
    if values is None:
        wanted = f"{size} float32 values ({4 * size} bytes)"
        return f"the answer must be base64 of the last step's output: {wanted}", float("inf")
    ours = await asyncio.get_running_loop().run_in_executor(_EXECUTOR, reference, path, shard["sha256"], pending)
    excess = excess_over_tolerance(values, ours, has_head=bool(shard["has_head"]))
    if not excess <= 1:  # NaN included
        return f"the answer is not {shard['id']}'s output for this challenge ({excess:.3g} times the tolerance)", excess
    return None, excess


def shard_path(sha256: str) -> str | None:
    """Where this server keeps the shard's file (the one it serves), or None when it has no such shard."""
    shard = Shard.objects.filter(sha256=sha256).first()
    return default_storage.path(str(shard.file.name)) if shard is not None else None


def reference(path: str, sha256: str, pending: Pending) -> np.ndarray:
    """The server's own answer to the challenge (blocking: the referee thread runs it)."""
    return challenge.run(_runtime(path, sha256), pending.challenge).answer


def excess_over_tolerance(theirs: np.ndarray, ours: np.ndarray, *, has_head: bool) -> float:
    """How far an answer sits from the reference, in tolerances: hidden states as a hop's output is judged against
    the referee's re-run, logits as returned logits are (verification/referee.py `output_excess`)."""
    return (tolerance.LOGITS if has_head else tolerance.HOP).excess(theirs, ours)


def _runtime(path: str, sha256: str) -> ShardRuntime:
    """The benchmark shard loaded once per process (its bytes checked against the SHA-256 when loaded)."""
    with _LOCK:
        runtime = _RUNTIMES.get(sha256)
        if runtime is None:
            runtime = _RUNTIMES[sha256] = ShardRuntime(path, sha256=sha256)
            while len(_RUNTIMES) > RUNTIMES_KEPT:
                _RUNTIMES.pop(next(iter(_RUNTIMES)))
        return runtime


class BenchmarkMixin:
    """The benchmark's messages on a provider's connection (ProviderConsumer): benchmark_ready gets one challenge per
    connection, its answer is timed on arrival and checked; a failure leaves the provider unbenchmarked, costs it
    reliability and closes the connection (4400) after a `benchmark_failed` error."""

    provider_id: int | None
    channel_name: str
    inbox: asyncio.Queue[dict[str, Any]]
    bench_shard: dict[str, Any] | None = None  # the welcome's benchmark shard
    bench_asked = False  # a challenge was sent on this connection (or refused): never a second one
    bench_pending: Pending | None = None
    bench_timer: asyncio.TimerHandle | None = None

    if TYPE_CHECKING:  # AsyncWebsocketConsumer's, which carries no type hints

        async def send(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None: ...

        async def close(self, code: int | None = None) -> None: ...

    async def _benchmark_ready(self, message: dict[str, Any]) -> None:
        shard_id = p.field(message, "shard_id", str)
        if self.bench_asked:
            already = "this connection was challenged already: one benchmark per connection"
            raise p.ProtocolError(already, code=p.DUPLICATE_BENCHMARK)
        if self.bench_shard is None:
            raise p.ProtocolError("there is nothing to benchmark: the welcome named no shard")
        self.bench_asked = True
        if shard_id != self.bench_shard["id"]:
            await self._benchmark_fail(f"the benchmark shard is {self.bench_shard['id']}, not {shard_id[:160]!r}")
            return
        found = new_challenge()
        self.bench_pending = Pending(shard=self.bench_shard, challenge=found, sent_ns=time.monotonic_ns())
        await self.send(text_data=p.challenge_message(found, shard_id=shard_id))
        # The deadline comes through the inbox, so it is handled in turn with the provider's messages, never beside.
        expired = {"type": "benchmark.expired", "seed": found.seed}
        deadline = settings.BENCHMARK_DEADLINE_SECONDS
        self.bench_timer = asyncio.get_running_loop().call_later(deadline, self.inbox.put_nowait, expired)

    async def _benchmark(self, message: dict[str, Any]) -> None:
        received = time.monotonic_ns()  # first: the provider's time ends when its answer arrives
        claimed = p.field(message, "ns_per_layer_token", int, low=1, high=10**12)
        shard_id, answer = p.field(message, "shard_id", str), p.field(message, "answer", str)
        pending, self.bench_pending = self.bench_pending, None
        self._benchmark_timer_cancel()
        if pending is None:
            await self._benchmark_fail(
                "no challenge is open on this connection: a benchmark answers the one challenge benchmark_ready brings"
            )
            return
        try:
            path = await database_sync_to_async(shard_path)(pending.shard["sha256"])
            if path is None:
                raise LookupError(f"this server holds no {pending.shard['id']}")
            reason, excess = await verdict(pending, shard_id=shard_id, answer=answer, path=path)
        except Exception as exc:  # the server's own copy could not be run: no fault of the provider's
            log.exception("could not check provider %s's benchmark", self.provider_id)
            await self._benchmark_fail(f"the server could not check the benchmark ({exc}); try later", penalty=False)
            return
        if reason is not None:
            await self._benchmark_fail(reason)
            return
        await self._benchmark_pass(pending, pending.measured(received), claimed, excess)

    async def _benchmark_pass(self, pending: Pending, measured: int, claimed: int, excess: float) -> None:
        await database_sync_to_async(services.provider_benchmark)(
            provider_id=self.provider_id,
            channel_name=self.channel_name,
            ns_per_layer_token=measured,
            claimed_ns_per_layer_token=claimed,
        )
        shard_id = pending.shard["id"]
        confirmed = {"ns_per_layer_token": measured, "claimed_ns_per_layer_token": claimed}
        await self.send(text_data=p.dumps(p.BENCHMARKED, shard_id=shard_id, **confirmed))
        text = "provider %s benchmarked on %s: %s ns per layer-token, answer at %.3g of the tolerance"
        log.info(text, self.provider_id, shard_id, confirmed, excess)

    async def benchmark_expired(self, event: dict[str, Any]) -> None:
        pending = self.bench_pending
        if pending is None or pending.challenge.seed != event.get("seed"):
            return  # answered meanwhile
        self.bench_pending = None
        deadline = settings.BENCHMARK_DEADLINE_SECONDS
        await self._benchmark_fail(f"no answer to the benchmark challenge within {deadline:g} s")

    async def _benchmark_fail(self, reason: str, *, penalty: bool = True) -> None:
        log.warning("provider %s failed its benchmark: %s", self.provider_id, reason)
        if penalty and self.provider_id is not None:
            await database_sync_to_async(services.provider_benchmark_fail)(
                provider_id=self.provider_id, channel_name=self.channel_name
            )
        await self.send(text_data=p.dumps(p.ERROR, code=p.BENCHMARK_FAILED, message=reason))
        await self.close(code=p.CLOSE_PROTOCOL)

    def _benchmark_timer_cancel(self) -> None:
        if self.bench_timer is not None:
            self.bench_timer.cancel()
            self.bench_timer = None
