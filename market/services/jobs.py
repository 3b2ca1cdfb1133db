"""Jobs: created by buyers, claimed and driven by the orchestrator, finished once; provider slots they hold."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from config.errors import Conflict, InvalidInput
from inference import wire
from inference.errors import InferenceError
from inference.tokenizer import validate_messages
from ledger import services as ledger_services
from market import model_files, quotes, scheduling, selectors
from market.models import Assignment, Job, LanguageModel, Provider
from market.services.settlement import job_settle

MAX_NEW_TOKENS = Job.MAX_NEW_TOKENS


def job_create(
    *,
    buyer: User,
    model: LanguageModel,
    messages: list[dict[str, Any]],
    max_new_tokens: int,
    temperature: Decimal,
    top_p: Decimal,
    seed: int | None,
    max_price: int | None = None,
    expires_in_seconds: int | None = None,
) -> Job:
    """Check the request against the model (roles, context length, a full chain of shards), store it as an open
    bid with its maximum price moved into escrow in the same transaction, and nudge the auction once the row is
    committed. Not enough balance: InsufficientFunds (402) and nothing is stored.

    `max_price` None offers the quote plus QUOTE_MARGIN_BPS (`market.quotes`), or the default price per layer-token
    (`selectors.default_max_price`) when nobody can serve the model now; the bid expires
    after `expires_in_seconds` (settings.BID_TTL_SECONDS when None) if no round has placed it by then."""
    try:
        validate_messages(messages)
    except ValueError as exc:
        raise InvalidInput(str(exc), code="bad_messages") from None
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise InvalidInput(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}")
    selectors.shard_chain(model=model, plan=None)  # NotFound (shard_unavailable) when the model cannot run
    check_prompt_size(model=model, messages=messages, max_new_tokens=max_new_tokens)
    try:
        prompt_ids = model_files.model_tokenizer(model).encode_chat(messages)
    except (ValueError, InferenceError) as exc:
        raise InvalidInput(str(exc), code="bad_messages") from None
    context = int(model.config["max_context"])
    if len(prompt_ids) + max_new_tokens > context:
        raise InvalidInput(
            f"the prompt is {len(prompt_ids)} tokens; with max_new_tokens={max_new_tokens} that exceeds the "
            f"model's context of {context}",
            code="context_overflow",
        )
    if len(prompt_ids) > (most := prefill_limit(model)):
        raise InvalidInput(
            f"the prompt is {len(prompt_ids)} tokens; its hidden states travel between shards in one frame, which "
            f"holds at most {most} tokens of this model",
            code="context_overflow",
        )
    if max_price is None:
        max_price = bid_from_quote(model=model, tokens=len(prompt_ids) + max_new_tokens) or selectors.default_max_price(
            model=model, prompt_tokens=len(prompt_ids), max_new_tokens=max_new_tokens
        )
    if not 1 <= max_price <= ledger_services.MAX_AMOUNT:
        raise InvalidInput(f"max_price must be between 1 and {ledger_services.MAX_AMOUNT} base units")
    ttl = settings.BID_TTL_SECONDS if expires_in_seconds is None else expires_in_seconds
    if not 1 <= ttl <= settings.BID_MAX_TTL_SECONDS:
        raise InvalidInput(f"expires_in_seconds must be between 1 and {settings.BID_MAX_TTL_SECONDS}")
    with transaction.atomic():
        job = Job.objects.create(
            buyer=buyer,
            model=model,
            messages=messages,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            prompt_tokens=len(prompt_ids),
            max_price=max_price,
            expires_at=timezone.now() + timedelta(seconds=ttl),
        )
        ledger_services.escrow_for_job(user=buyer, amount=max_price, job_ref=selectors.job_ref(job.pk))
        transaction.on_commit(_nudge)
    return job


def check_prompt_size(*, model: LanguageModel, messages: list[dict[str, Any]], max_new_tokens: int) -> None:
    """Refuse, before tokenising, messages too big to fit the context whatever their tokens: one token stands for at
    most `max_token_bytes` bytes, so more bytes than that times the room left cannot fit. Tokenising costs time in
    proportion to the text (megabytes took seconds), so an oversized prompt must cost next to nothing."""
    room = int(model.config["max_context"]) - max_new_tokens
    most = max(room, 0) * model_files.model_tokenizer(model).max_token_bytes
    size = sum(len(str(message.get("content", "")).encode()) for message in messages)
    if size > most:
        raise InvalidInput(
            f"the messages hold {size} bytes; with max_new_tokens={max_new_tokens} at most {most} bytes can fit in "
            f"the model's context of {room + max_new_tokens} tokens",
            code="context_overflow",
        )


def bid_from_quote(*, model: LanguageModel, tokens: int) -> int | None:
    """The quote for `tokens` tokens plus QUOTE_MARGIN_BPS, or None when no pipeline is free now."""
    try:
        return quotes.cheapest_pipeline(model=model).bid(tokens)
    except quotes.NoPipeline:
        return None


def prefill_limit(model: LanguageModel) -> int:
    """The longest prompt whose prefill fits in one tensor frame: hidden states [1, S, hidden] in float16 plus the
    header and three dimensions. A longer one would be accepted here and then fail at every provider."""
    return (wire.MAX_FRAME_BYTES - wire.HEADER_BYTES - 3 * 4) // (2 * int(model.config["hidden"]))


def _nudge() -> None:
    scheduling.auction_nudge()


def job_claim(*, job_id: int) -> Job | None:
    """Move a job that an auction round placed (allocated) to running; None when another runner has it or it was
    cancelled (safe to run twice)."""
    now = timezone.now()
    claimed = Job.objects.filter(pk=job_id, state=Job.State.ALLOCATED).update(
        state=Job.State.RUNNING, started_at=now, runner_seen_at=now
    )
    return Job.objects.select_related("model").get(pk=job_id) if claimed else None


def job_requeue(*, job_id: int, reason: str) -> bool:
    """A job whose providers failed before it produced anything goes back into the book, one priority level up,
    its escrow untouched (no extra charge); the next round places it again. False when it was cancelled."""
    requeued = Job.objects.filter(pk=job_id, state=Job.State.RUNNING).update(
        state=Job.State.QUEUED, priority=F("priority") + 1, started_at=None, error=reason
    )
    if requeued:
        transaction.on_commit(_nudge)
    return bool(requeued)


def job_progress(*, job_id: int, epoch: int = 0, tokens: list[int], text: str, pipeline: list[dict[str, Any]]) -> bool:
    """Store the tokens so far (every token: the buyer's stream snapshot reads them). False once cancelled, or once
    another runner took the job over (`epoch`: market/services/runners.py)."""
    running = Job.objects.filter(pk=job_id, state=Job.State.RUNNING, runner_epoch=epoch)
    return bool(running.update(tokens=tokens, text=text, pipeline=pipeline))


def job_finish(
    *,
    job_id: int,
    epoch: int = 0,
    state: str,
    tokens: list[int],
    text: str,
    finish_reason: str = "",
    error_code: str = "",
    error: str = "",
    pipeline: list[dict[str, Any]],
    timings: dict[str, Any],
) -> Job:
    """The end of a running job (done or failed); a job cancelled meanwhile keeps its state but gets the record. Only
    the runner that holds the job (`epoch`) ends it."""
    if state not in (Job.State.DONE, Job.State.FAILED):
        raise InvalidInput(f"a job finishes done or failed, not {state}")
    fields = {"tokens": tokens, "text": text, "pipeline": pipeline, "timings": timings, "finished_at": timezone.now()}
    held = Job.objects.filter(pk=job_id, runner_epoch=epoch)
    held.filter(state=Job.State.RUNNING).update(
        state=state, finish_reason=finish_reason, error_code=error_code, error=error, **fields
    )
    held.filter(state=Job.State.CANCELLED, finished_at__isnull=True).update(**fields)
    return Job.objects.get(pk=job_id)


def job_cancel(*, job: Job) -> Job:
    """Cancel a job that has not ended: a bid (queued, or allocated and not started) is refunded and the slots a
    round claimed for it are freed; a running job's runner notices before its next step and settles the work done.
    Finished jobs cannot be cancelled."""
    fields = {"state": Job.State.CANCELLED, "error_code": "cancelled", "error": "cancelled by the buyer"}
    with transaction.atomic():
        before = Job.State.QUEUED, Job.State.ALLOCATED
        if Job.objects.filter(pk=job.pk, state__in=before).update(**fields, finished_at=timezone.now()):
            # No runner will ever hold this job: free the slots a round claimed for it, refund its escrow, and
            # end its stream (nobody else would).
            round_id = Job.objects.values_list("auction_round_id", flat=True).get(pk=job.pk)  # not a stale read
            assignments_release(job_id=job.pk, round_id=round_id)
            job_settle(job_id=job.pk)
            transaction.on_commit(lambda: job_publish_end(job.pk))
        elif not Job.objects.filter(pk=job.pk, state=Job.State.RUNNING).update(**fields):
            raise Conflict(f"job {job.pk} is already {Job.objects.get(pk=job.pk).state}", code="job_finished")
    return Job.objects.get(pk=job.pk)


def job_publish_end(job_id: int) -> None:
    """Send the job's final event to its stream, for a job that ended without a runner (cancelled, expired)."""
    job = Job.objects.get(pk=job_id)
    async_to_sync(get_channel_layer().group_send)(selectors.job_group(job.pk), selectors.job_done_event(job))


def provider_claim_for_shard(*, exclude: set[int], heard_since: datetime | None = None) -> Provider | None:
    """Take one free slot on the fastest online provider not in `exclude` (the job's other hops, the ones that
    failed it), heard from since `heard_since` if given. The claim is a conditional UPDATE, so two runners can never
    both take a provider's last slot."""
    for provider in selectors.providers_free(exclude=exclude, heard_since=heard_since):
        claimed = Provider.objects.filter(
            pk=provider.pk, state=Provider.State.ONLINE, busy_slots__lt=F("slots"), channel_name=provider.channel_name
        ).update(busy_slots=F("busy_slots") + 1)
        if claimed:
            return provider
    return None


def assignments_release(*, job_id: int, round_id: int | None) -> None:
    """Give back every slot the job's round claimed for it (a job that will not run on them)."""
    for held in Assignment.objects.filter(job_id=job_id, auction_round_id=round_id):
        provider_release(provider_id=held.provider_id, channel_name=held.channel_name)


def provider_release(*, provider_id: int, channel_name: str) -> None:
    """Give back a slot; a provider that reconnected meanwhile has a new channel and already starts from zero."""
    Provider.objects.filter(pk=provider_id, channel_name=channel_name, busy_slots__gt=0).update(
        busy_slots=F("busy_slots") - 1
    )
