"""A job's tokens on their way to the buyer, off the step loop's critical path.

The runner hands each token over and carries on with the next step at once; a background task stores the tokens
and then publishes them to the group `job-<id>`, in order. Storing before publishing is what lets the stream
consumer join the group first and read the stored tokens second without missing any.

The task stores at most once every STREAM_STORE_EVERY_MS (the first token at once): the tokens that arrive
meanwhile go into the next write and one event. A store per token would cost the server's process a database
write's worth of Python per token, in a thread that holds the GIL while the event loop waits to relay the next
hop's frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import BaseChannelLayer
from django.conf import settings

from market import selectors, services


@dataclasses.dataclass(frozen=True)
class Piece:
    index: int
    token: int
    text: str  # the text this token adds (held back while it ends inside a multi-byte character)
    text_length: int  # length of the job's whole text after this token


class TokenStream:
    def __init__(self, *, job_id: int, layer: BaseChannelLayer, decode: Callable[[list[int]], str]) -> None:
        self.job_id = job_id
        self.layer = layer
        self.group = selectors.job_group(job_id)
        self.decode = decode
        self.tokens: list[int] = []
        self.text = ""
        self.pipeline: list[dict[str, Any]] = []
        self.epoch = 0  # the runner's hold on the job (market/services/runners.py)
        self.cancelled = False  # set when a write finds the job no longer running, or no longer this runner's
        self.superseded = False  # set when a write finds that another runner took the job over
        self._pieces: list[Piece] = []
        self._published = 0
        self._wake = asyncio.Event()
        self._closing = False  # set by flush: write what is left at once, then stop
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def resume(self, tokens: list[int], text: str) -> None:
        """Go on from tokens a previous runner stored and published (a job taken over: market/services/runners.py)."""
        self.tokens[:] = tokens
        self.text = text
        self._pieces = [Piece(index, token, "", len(text)) for index, token in enumerate(tokens)]
        self._published = len(self._pieces)

    def add(self, token: int) -> None:
        self.tokens.append(token)
        text = self.decode(self.tokens)
        stable = text[:-1] if text.endswith("\ufffd") else text  # an incomplete UTF-8 sequence: wait for the rest
        delta = stable[len(self.text) :] if stable.startswith(self.text) else ""
        self.text += delta
        self._pieces.append(Piece(len(self.tokens) - 1, token, delta, len(self.text)))
        self._wake.set()

    async def flush(self) -> None:
        """Store and publish every token added so far, without waiting out the interval, and stop the writer."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def final_text(self) -> str:
        return self.decode(self.tokens)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_write = 0.0
        timer: asyncio.TimerHandle | None = None
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._published < len(self._pieces):
                wait = next_write - loop.time()
                if wait > 0 and not self._closing:  # written recently: these tokens go with the next write
                    if timer is None or timer.when() <= loop.time():  # none pending yet
                        timer = loop.call_later(wait, self._wake.set)
                    continue
                await self._write()
                next_write = loop.time() + settings.STREAM_STORE_EVERY_MS / 1000
            if self._closing and self._published == len(self._pieces):
                if timer is not None:
                    timer.cancel()
                return

    async def _write(self) -> None:
        upto = len(self._pieces)
        stored = await sync_to_async(services.job_progress)(
            job_id=self.job_id,
            epoch=self.epoch,
            tokens=self.tokens[:upto],
            text=self.text[: self._pieces[upto - 1].text_length],
            pipeline=self.pipeline,
        )
        if not stored and not await sync_to_async(selectors.job_held)(job_id=self.job_id, epoch=self.epoch):
            self.superseded = self.cancelled = True  # the new runner streams from what is stored, not from here
            self._published = upto
            return
        self.cancelled = self.cancelled or not stored
        pieces = [[p.index, p.token, p.text] for p in self._pieces[self._published : upto]]
        await self.layer.group_send(self.group, {"type": "job.tokens", "pieces": pieces})
        self._published = upto
