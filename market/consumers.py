"""/ws/jobs/<id>/: a buyer watches the tokens of their own job as they are generated.

On connect the consumer joins the job's group first and reads the stored tokens second, so no token can fall
between the two; a token that arrives both ways is sent once (events carry their index). The `done` event carries
the job's verification state (its challenge window, audits and challenges); with `?follow=verification` the stream
stays open after `done` and sends a `verification` event whenever that changes, until a verdict is in.

/ws/market/ (MarketConsumer): anyone watches the market's rounds and figures, as the dashboard does.
"""

from __future__ import annotations

import json
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from config.errors import NotFound
from config.ws_auth import TokenRevocationMixin
from market import overview, selectors
from market.models import Job
from transport.inbox import InboxConsumerMixin
from verification import selectors as verification_selectors

CLOSE_NOT_FOUND = 4404


class JobConsumer(TokenRevocationMixin, InboxConsumerMixin, AsyncWebsocketConsumer):  # type: ignore[misc]  # channels ships no type hints
    async def connect(self) -> None:
        user = self.scope.get("user")
        job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        await self.accept()
        self.follow = "follow=verification" in self.scope.get("query_string", b"").decode("latin-1")
        try:
            if user is None or not user.is_authenticated:
                raise NotFound(f"job {job_id} not found", code="job_not_found")
            self.group = selectors.job_group(job_id)
            await self.channel_layer.group_add(self.group, self.channel_name)
            job = await database_sync_to_async(selectors.job_for_buyer)(buyer=user, job_id=job_id)
        except NotFound as exc:
            await self.send(text_data=json.dumps({"type": "error", "code": exc.code, "message": exc.message}))
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.token_group_join()
        self.sent = len(job.tokens)
        # An open bid also says why the last round did not place it (empty until a round has seen it lose).
        reason = job.error if job.state == Job.State.QUEUED else ""
        await self._send("snapshot", state=job.state, tokens=job.tokens, text=job.text, reason=reason)
        if job.state in Job.FINAL_STATES:
            await self.job_done(selectors.job_done_event(job))

    async def disconnect(self, code: int) -> None:
        await self.token_group_leave()
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def _send(self, kind: str, **fields: Any) -> None:
        await self.send(text_data=json.dumps({"type": kind, **fields}))

    async def job_tokens(self, event: dict[str, Any]) -> None:
        """Tokens stored since the last event (`[index, token, text]` each): each goes to the buyer as one message."""
        for index, token, text in event["pieces"]:
            if index < self.sent:
                continue  # already in the snapshot
            self.sent = index + 1
            await self._send("token", index=index, token=token, text=text)

    async def job_bid(self, event: dict[str, Any]) -> None:
        """A round did not place the bid: why (market.services.auction._explain_losers)."""
        await self._send("bid", state="queued", reason=event["reason"])

    async def job_done(self, event: dict[str, Any]) -> None:
        job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        verification = await database_sync_to_async(_verification)(job_id)
        await self._send("done", **{k: v for k, v in event.items() if k != "type"}, verification=verification)
        if not (self.follow and event["state"] == Job.State.DONE and verification["state"] not in DECIDED):
            await self.close()

    async def job_verification(self, event: dict[str, Any]) -> None:
        """An audit or a challenge opened, or a verdict came (verification.selectors.publish_verification)."""
        await self._send("verification", **event["verification"])
        if self.follow and event["verification"]["state"] in DECIDED:
            await self.close()


DECIDED = ("verified", "fraud")


def _verification(job_id: int) -> dict[str, Any]:
    return dict(verification_selectors.jsonable(verification_selectors.job_verification(Job.objects.get(pk=job_id))))


class MarketConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # channels ships no type hints
    """/ws/market/: the dashboard's live feed, open to anyone (it carries only market.overview's public figures).

    It only listens: each event of the `market` group arrives as ready JSON text, built once for every viewer, and
    goes out as it is. Nothing a client sends is read or changes anything.
    """

    async def connect(self) -> None:
        await self.channel_layer.group_add(overview.MARKET_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(overview.MARKET_GROUP, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Input is ignored: this socket only sends."""

    async def market_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])
