"""The orchestrator: drives one job through a pipeline of providers, one per shard, over the channel layer.

A JobRunner owns a private channel. For every step it sends the step's input to hop 0's provider, relays each
hop's output to the next hop, samples the next token from the last hop's logits and streams it to the group
`job-<id>` (read by /ws/jobs/<id>/). It records every hop's inputs, so that when a provider disconnects, errs or
misses a deadline, a replacement opens a fresh session, is fed the recorded inputs step by step to rebuild its
KV cache, and the step carries on there. Tokens are produced once, after the last hop, so the buyer sees each
exactly once whatever happens underneath.

A runner that takes over a job whose runner was lost (its server died: market/services/runners.py) does the same
for every hop at once: a fresh pipeline is fed the prompt and the stored tokens step by step, then generation goes
on from the next token.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import statistics
import time
import uuid
from typing import Any

import numpy as np
from asgiref.sync import sync_to_async
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings

from inference import wire
from inference.generate import Sampler, SamplingParams
from market import model_files, selectors, services
from market.models import Job, Provider
from market.placement import AuctionPlacement, FastestFreePlacement, Placement
from market.streaming import TokenStream
from transport import relay
from transport.messages import (
    Forward,
    Message,
    ProviderClose,
    ProviderOpen,
    ProviderRoute,
    ProviderStep,
    RunnerError,
    RunnerLost,
    RunnerOpened,
    RunnerOutput,
    job_ends,
    parse,
)
from transport.protocol import HEAD_ARGMAX, HEAD_LOGITS
from verification.services import audits, transcripts

log = logging.getLogger(__name__)


async def run_job(
    job_id: int,
    *,
    placement: Placement | None = None,
    layer: BaseChannelLayer | None = None,
    resume_epoch: int | None = None,
) -> None:
    """Claim a job an auction round placed and drive it to its end; a job someone else claimed, or cancelled, is
    left alone. With `resume_epoch`, resume a job taken over from a lost runner instead: its hops go on the fastest
    free providers, at the prices its round cleared."""
    if resume_epoch is None:
        job = await sync_to_async(services.job_claim)(job_id=job_id)
        placement = placement or AuctionPlacement()
    else:
        job = await sync_to_async(services.job_resume_claim)(job_id=job_id, epoch=resume_epoch)
        placement = placement or FastestFreePlacement()
    if job is None:
        return
    await JobRunner(job, layer or get_channel_layer(), placement, resume=resume_epoch is not None).run()


class JobFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class HopFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Cancelled(Exception):
    pass


class Requeue(Exception):
    """The pipeline could not be set up: the job goes back into the book (see `services.job_requeue`)."""


class Superseded(Exception):
    """Another runner took the job over (this one lost its lease): it owns the job, its stream and its end."""


@dataclasses.dataclass
class Hop:
    """One shard of the job's pipeline: the provider serving it now and everything it was fed so far."""

    index: int
    shard: dict[str, Any]
    provider: Provider | None = None
    session: uuid.UUID | None = None
    inputs: list[np.ndarray] = dataclasses.field(default_factory=list)
    failed: set[int] = dataclasses.field(default_factory=set)
    round_trips: list[float] = dataclasses.field(default_factory=list)


class JobRunner:
    def __init__(self, job: Job, layer: BaseChannelLayer, placement: Placement, *, resume: bool = False) -> None:
        self.job = job
        self.epoch = job.runner_epoch  # this runner's hold on the job (market/services/runners.py)
        self.resume = resume
        self.delivered = 0  # tokens a lost runner delivered, replayed before generation goes on
        self.replaying = False
        self.layer = layer
        self.placement = placement
        self.channel = ""
        self.answers = relay.ChannelInbox(layer)  # the runner's channel: providers' answers arrive here
        self.group = selectors.job_group(job.pk)
        self.hops: list[Hop] = []
        self.record: list[dict[str, Any]] = []  # the pipeline as the buyer sees it: every placement, in order
        self.stream = TokenStream(job_id=job.pk, layer=layer, decode=lambda ids: self.tokenizer.decode(ids))
        self.stream.epoch = self.epoch
        self.tokens = self.stream.tokens  # the generated ids, in order (the stream owns the list)
        self.timings: dict[str, Any] = {}
        self.inbox: dict[str, list[Message]] = {}  # session -> messages that arrived while awaiting another
        self.steps_done = 0  # steps that went through every hop
        self.head_answers: list[Any] = []  # the head's answer per step, for the transcript
        # How each step input reached its provider's consumer: "now" (on the socket in the callback that had it),
        # "queued" (through the consumer's inbox) or "layer" (through the channel layer).
        self.relayed: collections.Counter[str] = collections.Counter()
        # The step whose input the head's consumer already sent to hop 0 (a greedy job's next token: see
        # `_next_address`), so the runner does not send it again.
        self.sent_ahead: int | None = None

    async def run(self) -> None:
        state, reason, code, message = Job.State.FAILED, "", "", ""
        lease = asyncio.get_running_loop().create_task(self._hold_lease(asyncio.current_task()))
        try:
            self.channel = await self.answers.open()
            self.stream.pipeline = self.record
            self.stream.start()
            try:
                await self._prepare()
            except JobFailed as exc:
                if self.resume:  # it ran before: requeueing would charge the buyer's escrow twice
                    raise JobFailed(
                        "runner_lost", f"the server running this job stopped, and it could not be resumed: {exc}"
                    ) from None
                raise Requeue(exc.message) from None
            reason = await self._generate()
            state = Job.State.DONE
        except Requeue as exc:
            code, message = "requeued", str(exc)
        except JobFailed as exc:
            code, message = exc.code, exc.message
        except Cancelled:
            code, message = "cancelled", "cancelled by the buyer"
            if self.stream.superseded:
                code = "superseded"
        except Superseded:
            code = "superseded"
        except asyncio.CancelledError:
            if not self.stream.superseded:  # cancelled from outside: not ours to handle
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]  # run() always runs in a task
            code = "superseded"
        except Exception:  # a bug must not leave the job running forever or hold providers' slots
            log.exception("job %s failed unexpectedly", self.job.pk)
            code, message = "internal_error", "the orchestrator failed; the job was stopped"
        finally:
            lease.cancel()
            await self._release()
            await self.stream.flush()
            await self.answers.close()
        if code == "requeued" and await sync_to_async(services.job_requeue)(job_id=self.job.pk, reason=message):
            log.info("job %s back in the book: %s", self.job.pk, message)
            return
        if code == "superseded":
            log.warning("job %s was taken over by another runner; this one stops", self.job.pk)
            return
        await self._finish(state, reason, code, message)

    async def _hold_lease(self, runner: asyncio.Task[Any] | None) -> None:
        """Renew the job's lease while it runs (market/services/runners.py takes over jobs whose runner stopped);
        once another runner holds it, this one stops at its next step."""
        beat = sync_to_async(services.job_runner_beat, thread_sensitive=False)
        while await beat(job_id=self.job.pk, epoch=self.epoch):
            await asyncio.sleep(settings.RUNNER_HEARTBEAT_SECONDS)
        if not await sync_to_async(selectors.job_held)(job_id=self.job.pk, epoch=self.epoch):
            self.stream.superseded = True
            if runner is not None:
                runner.cancel()  # at once, not at its next step: it may be waiting out a deadline

    # --- setting up -------------------------------------------------------------------------------------------

    async def _prepare(self) -> None:
        shards, tokenizer = await sync_to_async(self._load_model)()
        self.tokenizer = tokenizer
        self.prompt = tokenizer.encode_chat(self.job.messages)
        self.hops = [Hop(index=i, shard=shard) for i, shard in enumerate(shards)]
        if self.resume:  # the lost runner's placements (closed at what it delivered) and its tokens
            self.record.extend(self.job.pipeline)
            self.stream.resume(list(self.job.tokens), self.job.text)
            self.delivered = self.steps_done = len(self.tokens)
            self.replaying = self.delivered > 0
        for hop in self.hops:
            await self._place(hop, from_step=self.delivered)
        for hop in reversed(self.hops):  # each open names the next hop, where the provider's outputs go on to
            await self._open(hop)
        for hop in self.hops:  # all open at once (downloads and loads overlap); answers are collected in turn
            try:
                await self._await_opened(hop)
            except HopFailed as failure:
                await self._replace(hop, 0, failure)

    def _load_model(self) -> tuple[list[dict[str, Any]], Any]:
        shards = selectors.shard_chain(model=self.job.model, plan=None)
        return [selectors.shard_descriptor(s) for s in shards], model_files.model_tokenizer(self.job.model)

    async def _place(self, hop: Hop, *, from_step: int) -> None:
        """Claim a provider for the hop (with a fresh session id) and record the placement; `_open` opens it."""
        exclude = hop.failed | {h.provider.pk for h in self.hops if h.provider is not None and h is not hop}
        if not await sync_to_async(selectors.job_held)(job_id=self.job.pk, epoch=self.epoch):
            raise Superseded()  # a takeover freed the slots this runner held; it claims no more
        provider = await sync_to_async(self.placement.place)(job=self.job, shard=hop.shard, exclude=exclude)
        if provider is None:
            raise JobFailed(
                "no_provider",
                f"no provider is free to serve shard {hop.shard['id']}"
                + (f" after {len(hop.failed)} failed" if hop.failed else ""),
            )
        hop.provider, hop.session = provider, uuid.uuid4()
        self.record.append(
            {
                "hop": hop.index,
                "shard": hop.shard["id"],
                "provider": provider.pk,
                "provider_name": provider.name,
                "backend": provider.backend,
                "session": str(hop.session),
                "channel": provider.channel_name,  # where its slot was claimed (not shown to buyers)
                "from_step": from_step,
                "until_step": None,
                "ended": "",
            }
        )
        await sync_to_async(services.job_progress)(
            job_id=self.job.pk, epoch=self.epoch, tokens=self.tokens, text=self.stream.text, pipeline=self.record
        )

    def _next_address(self, hop: Hop) -> Forward | None:
        """Where the consumer of `hop` sends its outputs on to: the next hop's provider and session. The head of a
        greedy job sends its argmax on to hop 0 as the next step's input, unless `job_ends` there: the same rule
        `_generate` applies, applied without a turn through the runner."""
        last = hop.index + 1 == len(self.hops)
        if last and (not self._greedy or self.replaying):  # a replay sends every step's input itself
            return None
        after = self.hops[0 if last else hop.index + 1]
        assert after.provider is not None
        address = Forward(channel=after.provider.channel_name, session=str(after.session), hop=after.index)
        if last:
            address = dataclasses.replace(
                address, next_token=True, stop_ids=tuple(sorted(self.tokenizer.stop_ids)), last_step=self._last_step
            )
        return address

    @property
    def _last_step(self) -> int:
        return int(self.job.max_new_tokens) - 1  # step s answers token s + 1

    @property
    def _greedy(self) -> bool:
        return bool(self.job.temperature == 0)

    async def _open(self, hop: Hop) -> None:
        """Ask the hop's provider to open its session (the answer is awaited separately)."""
        assert hop.provider is not None
        await relay.deliver(
            self.layer,
            hop.provider.channel_name,
            ProviderOpen(
                session=str(hop.session),
                hop=hop.index,
                shard=hop.shard,
                reply_to=self.channel,
                forward=self._next_address(hop),
                # A greedy job needs only the argmax of the logits: 8 bytes back from the head instead of 4 × vocab.
                head_output=HEAD_ARGMAX if self._greedy else HEAD_LOGITS,
            ),
        )

    async def _reroute(self, hop: Hop) -> None:
        """Point the previous hop's outputs at this hop's (new) session (hop 0's previous hop is a greedy job's
        head)."""
        if hop.index == 0 and not self._greedy:
            return
        before = self.hops[hop.index - 1]
        assert before.provider is not None
        await relay.deliver(
            self.layer,
            before.provider.channel_name,
            ProviderRoute(session=str(before.session), forward=self._next_address(before)),
        )

    async def _await_opened(self, hop: Hop) -> None:
        await self._await(hop, RunnerOpened, None, settings.SESSION_OPEN_DEADLINE_SECONDS)

    # --- the generation loop ----------------------------------------------------------------------------------

    async def _generate(self) -> str:
        params = SamplingParams(
            temperature=float(self.job.temperature), top_p=float(self.job.top_p), seed=self.job.seed
        )
        sampler = Sampler(params)
        stops = self.tokenizer.stop_ids
        started = time.perf_counter()
        step, reason = 0, "length"
        if self.delivered:
            step = await self._replay(sampler)
            if len(self.tokens) >= self.job.max_new_tokens:
                return reason
            step += 1
            head = await self._forward(step, np.asarray([[self.tokens[-1]]], dtype=np.int64))
        else:
            head = await self._forward(0, np.asarray([self.prompt], dtype=np.int64))
        prefilled = time.perf_counter()
        self.timings["prefill_s"] = round(prefilled - started, 4)
        step_seconds: list[float] = []
        while True:
            # The head returns logits, or for a greedy job their argmax (the same token the sampler would pick).
            token = int(head[0, 0]) if head.dtype == np.int64 else sampler(head[0])
            # The head's consumer applies the same rule to a greedy job's token before sending it on to hop 0.
            ending = job_ends(token, len(self.tokens), stop_ids=stops, last_step=self._last_step)
            if ending == "stop":
                reason = "stop"
                break
            self.stream.add(token)
            if self.stream.cancelled:
                raise Cancelled()
            if ending == "length":
                break
            step += 1
            step_started = time.perf_counter()
            head = await self._forward(step, np.asarray([[token]], dtype=np.int64))
            step_seconds.append(time.perf_counter() - step_started)
        finished = time.perf_counter()
        self.timings.update(
            decode_s=round(finished - prefilled, 4),
            decode_steps=step,
            decode_tokens_per_s=round(step / (finished - prefilled), 2) if step else 0.0,
            decode_step_ms=_spread(step_seconds),
        )
        return reason

    async def _replay(self, sampler: Sampler) -> int:
        """Rebuild every hop's KV cache after a takeover: the prompt and the tokens the lost runner delivered go
        through the new pipeline step by step, as they did the first time (so the recorded inputs, the commitments
        and the transcript have the same steps). Each head answer is compared with the stored token, and a sampling
        job's random stream advances as it did. Returns the last step replayed."""
        started = time.perf_counter()
        differ = 0
        for step in range(self.delivered):
            ids = self.prompt if step == 0 else [self.tokens[step - 1]]
            head = await self._forward(step, np.asarray([ids], dtype=np.int64))
            token = int(head[0, 0]) if head.dtype == np.int64 else sampler(head[0])
            differ += token != self.tokens[step]
        self.replaying = False
        for hop in self.hops:  # what each new placement redid: the platform pays for it (market/services/settlement.py)
            self.record[self._record_index(hop)]["replayed_steps"] = self.delivered
        await self._reroute(self.hops[0])  # a greedy job's head sends the next token on to hop 0 again
        self.timings |= {"replayed_steps": self.delivered, "replay_s": round(time.perf_counter() - started, 4)}
        if differ:  # near-ties decided otherwise on other hardware; the buyer's tokens stand
            self.timings["replay_tokens_differing"] = differ
            log.warning("job %s: %d replayed token(s) differ from the delivered ones", self.job.pk, differ)
        return self.delivered - 1

    async def _forward(self, step: int, ids: np.ndarray) -> np.ndarray:
        """One step through every hop. The runner sends the input to hop 0; each hop's consumer sends the output
        on to the next hop itself and a copy here, which is recorded as the next hop's input (for replay, and the
        transcript). A hop that fails is replaced, and the step resumes from its recorded input. Returns the last
        hop's output: logits [1, vocab] float32, or their argmax [1, 1] int64 for a greedy job."""
        if self.stream.superseded:
            raise Superseded()
        hops = self.hops
        if len(hops[0].inputs) == step:
            hops[0].inputs.append(ids)
        if self.sent_ahead != step:
            await self._send_step(hops[0], step, ids)
        started = time.perf_counter()
        for hop in hops:
            asked_again = False
            while True:
                try:
                    out: np.ndarray = await self._await(hop, RunnerOutput, step, settings.STEP_DEADLINE_SECONDS)
                    break
                except HopFailed as failure:
                    if failure.code == "deadline" and not asked_again:
                        # A message may have been lost between processes: ask once more before giving up on the
                        # provider (it answers a repeated step from its last output without running it again).
                        asked_again = True
                        await self._send_step(hop, step, hop.inputs[step])
                        continue
                    await self._replace(hop, step, failure)
                    await self._send_step(hop, step, hop.inputs[step])
            now = time.perf_counter()
            hop.round_trips.append(now - started)
            started = now
            if hop.index + 1 < len(hops) and len(hops[hop.index + 1].inputs) == step:
                hops[hop.index + 1].inputs.append(out)
        if len(self.head_answers) == step:
            self.head_answers.append(out)
        self.steps_done = max(self.steps_done, step + 1)
        return out

    async def _send_step(self, hop: Hop, step: int, tensor: np.ndarray, *, forward: bool = True) -> None:
        assert hop.provider is not None and hop.session is not None
        if tensor.dtype == np.float32:
            tensor = tensor.astype(np.float16)  # hidden states travel as float16 (half the bytes)
        frame = wire.encode(wire.MessageType.STEP_INPUT, hop.session, step, hop.index, tensor)
        delivered = await relay.deliver(
            self.layer,
            hop.provider.channel_name,
            ProviderStep(
                session=str(hop.session), step=step, tokens=int(tensor.shape[1]), frame=frame, forward=forward
            ),
        )
        self.relayed[delivered] += 1

    async def _await(
        self, hop: Hop, kind: type[RunnerOpened] | type[RunnerOutput], step: int | None, deadline: float
    ) -> Any:
        """Wait for the hop's answer; its provider's failure raises HopFailed, and so does the deadline.

        One receiver reads the runner's channel: messages of the job's other current sessions wait in the inbox
        for their turn, those of replaced sessions (a late output of a provider that failed) are dropped.
        """
        session = str(hop.session)
        until = time.monotonic() + deadline
        while True:
            queued = self.inbox.get(session)
            message = queued.pop(0) if queued else await self._receive(until, deadline)
            answer_session = getattr(message, "session", None)
            if answer_session != session:
                if any(str(h.session) == answer_session for h in self.hops):
                    self.inbox.setdefault(str(answer_session), []).append(message)
                continue
            if isinstance(message, RunnerLost):
                raise HopFailed("provider_lost", "the provider disconnected")
            if isinstance(message, RunnerError):
                raise HopFailed(message.code, message.message)
            if isinstance(message, RunnerOpened) and kind is RunnerOpened:
                return None
            if isinstance(message, RunnerOutput) and kind is RunnerOutput and message.step == step:
                if message.relayed:
                    self.relayed[message.relayed] += 1
                    if hop is self.hops[-1]:
                        self.sent_ahead = message.step + 1
                return wire.decode(message.frame).tensor

    async def _receive(self, until: float, deadline: float) -> Message:
        remaining = until - time.monotonic()
        if remaining <= 0:
            raise HopFailed("deadline", f"no answer within {deadline:.0f} s")
        try:
            # A timeout scope, not wait_for: that would run each wait (three per token) as a task of its own.
            async with asyncio.timeout(remaining):
                event = await self.answers.get()
        except TimeoutError:
            raise HopFailed("deadline", f"no answer within {deadline:.0f} s") from None
        return parse(event)

    async def _replace(self, hop: Hop, step: int, failure: HopFailed) -> None:
        """Put another provider on the hop and rebuild its KV cache by replaying steps 0..step-1 into a fresh
        session; a replacement that fails too is replaced in turn, until no provider is left."""
        while True:
            lost = await self._drop(hop, step, failure)
            try:
                # During a takeover's replay the steps before `delivered` are paid already: the buyer pays from there.
                await self._place(hop, from_step=max(step, self.delivered))
            except JobFailed as exc:
                raise JobFailed(
                    "no_replacement",
                    f"provider {lost.name} serving shard {hop.shard['id']} failed at step {step} ({failure.code}: "
                    f"{failure}) and {exc.message.replace('no provider is', 'no other provider is')}",
                ) from None
            await self._open(hop)
            await self._reroute(hop)
            try:
                await self._await_opened(hop)
                for earlier in range(step):  # pipelined: all sent, then collected in order; nothing goes on
                    await self._send_step(hop, earlier, hop.inputs[earlier], forward=False)
                for earlier in range(step):
                    await self._await(hop, RunnerOutput, earlier, settings.STEP_DEADLINE_SECONDS)
                return
            except HopFailed as again:
                failure = again

    async def _drop(self, hop: Hop, step: int, failure: HopFailed) -> Provider:
        """Take the hop off its provider: record why, free the slot, lower the provider's reliability."""
        lost = hop.provider
        assert lost is not None
        log.warning("job %s: provider %s failed hop %d at step %d (%s)", self.job.pk, lost.pk, hop.index, step, failure)
        self.record[self._record_index(hop)].update(until_step=step, ended=f"{failure.code}: {failure}")
        hop.failed.add(lost.pk)
        self.inbox.pop(str(hop.session), None)
        await relay.deliver(self.layer, lost.channel_name, ProviderClose(session=str(hop.session)))
        await sync_to_async(services.provider_release)(provider_id=lost.pk, channel_name=lost.channel_name)
        await sync_to_async(services.provider_record_failure)(provider_id=lost.pk)
        hop.provider = None
        return lost

    def _record_speeds(self) -> None:
        """What each provider's decode steps took here (the time from the previous hop's output to its own), per
        layer-token: the market prices and places by this once it has enough of it, not by the provider's word. Only
        a hop that one provider served the whole job counts (a replacement's steps are mixed with its
        predecessor's)."""
        for hop in self.hops:
            decode = hop.round_trips[1 + settings.SPEED_WARMUP_STEPS :]  # the prompt's step and the warm-up left out
            served_alone = sum(1 for entry in self.record if entry["hop"] == hop.index) == 1
            if hop.provider is None or not served_alone or len(decode) < 3:
                continue
            ns = int(
                statistics.median(decode) * 1e9 / max(int(hop.shard["end_layer"]) - int(hop.shard["first_layer"]), 1)
            )
            services.provider_record_speed(provider_id=hop.provider.pk, ns_per_layer_token=ns, steps=len(decode))

    def _record_transcript(self) -> None:
        """Keep what every hop was fed and the head answered, for audits and challenges (after the job, so the
        steps never wait for it)."""
        if self.steps_done == 0:
            return
        try:
            transcripts.transcript_record(
                job_id=self.job.pk,
                hops=[transcripts.hop_descriptor(h.index, h.shard) for h in self.hops],
                inputs=[h.inputs[: self.steps_done] for h in self.hops],
                heads=[transcripts.head_answer(a) for a in self.head_answers[: self.steps_done]],
            )
        except Exception:  # the job stands without it: it cannot be checked, and the buyer is not charged more
            log.exception("job %s: its transcript could not be stored", self.job.pk)

    def _draw_audit(self) -> None:
        try:
            audits.job_audit_draw(job_id=self.job.pk)
        except Exception:
            log.exception("job %s: the audit draw failed", self.job.pk)

    def _record_index(self, hop: Hop) -> int:
        return max(i for i, entry in enumerate(self.record) if entry["hop"] == hop.index)

    # --- the end ----------------------------------------------------------------------------------------------

    async def _release(self) -> None:
        await sync_to_async(self.placement.release_unused)()
        # After a takeover, the slots of the placements the job's record held then were freed by it; only those this
        # runner claimed since (a replacement it placed before it noticed) are its own to give back.
        freed = await sync_to_async(self._freed_by_takeover)() if self.stream.superseded else set()
        for hop in self.hops:
            if hop.provider is None:
                continue
            await relay.deliver(self.layer, hop.provider.channel_name, ProviderClose(session=str(hop.session)))
            if str(hop.session) in freed:
                continue
            await sync_to_async(services.provider_release)(
                provider_id=hop.provider.pk, channel_name=hop.provider.channel_name
            )
        self.timings["step_inputs_relayed"] = dict(self.relayed)
        self.timings["hop_round_trip_ms_median"] = [
            round(statistics.median(h.round_trips[1:]) * 1000, 3) if len(h.round_trips) > 1 else None for h in self.hops
        ]

    def _freed_by_takeover(self) -> set[str]:
        return {str(entry.get("session")) for entry in Job.objects.get(pk=self.job.pk).pipeline}

    async def _finish(self, state: str, reason: str, code: str, message: str) -> None:
        for entry in self.record:
            if entry["until_step"] is None:
                entry["until_step"] = max(entry["from_step"], self.steps_done)
                entry["ended"] = state
        job = await sync_to_async(services.job_finish)(
            job_id=self.job.pk,
            epoch=self.epoch,
            state=state,
            tokens=self.tokens,
            text=self.stream.final_text() if self.tokens else "",
            finish_reason=reason,
            error_code=code,
            error=message,
            pipeline=self.record,
            timings=self.timings,
        )
        if state == Job.State.DONE:
            for hop in self.hops:
                if hop.provider is not None:
                    await sync_to_async(services.provider_record_success)(
                        provider_id=hop.provider.pk, steps=len(hop.inputs)
                    )
        await sync_to_async(self._record_speeds)()
        await sync_to_async(self._record_transcript)()
        try:
            await sync_to_async(services.job_settle)(job_id=job.pk)
        except Exception:  # the next auction round settles what is left unsettled
            log.exception("job %s: settlement failed; the next round retries it", job.pk)
        else:
            await sync_to_async(self._draw_audit)()
        await self.layer.group_send(self.group, selectors.job_done_event(job))
        log.info("job %s %s (%s%s)", job.pk, job.state, reason or code, f": {message}" if message else "")


def _spread(seconds: list[float]) -> dict[str, float] | None:
    """Median, 90th and 99th percentile and maximum of step times, in ms: the tail shows stalls a mean hides."""
    if not seconds:
        return None
    ordered = sorted(seconds)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"median": round(1000 * statistics.median(ordered), 3), "p90": at(0.9), "p99": at(0.99), "max": at(1.0)}
