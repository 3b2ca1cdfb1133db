"""Settling a finished job: pay its providers for the work they did at the prices the auction cleared, the fee to
the platform, and the rest of the escrow back to the buyer.

What each placement did comes from the job's pipeline record: the provider on hop k served steps
[from_step, until_step); step 0 is the prompt (prompt_tokens tokens), every later step one token. A placement
is paid unit price × the hop's layers × those tokens, at the unit price its hop cleared in the job's round
(a replacement after a failure takes over its hop's terms, so failover never costs the buyer more), minus the
platform fee (`market.auction.platform_fee`, at the hop's cleared ask). A provider that dropped mid-job is paid
for the steps it finished; a job that was done, or cancelled while it ran, pays for its work; a failed or
expired job, or one cancelled before it ran, is refunded in full.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from config.errors import Conflict
from ledger import selectors as ledger_selectors
from ledger import services as ledger_services
from market import overview, selectors
from market.auction import platform_fee
from market.models import Assignment, Job, Provider

RUNNER_LOST = "runner_lost"  # a placement the takeover of a lost runner closed (market/services/runners.py)


def job_settle(*, job_id: int) -> Job:
    """Settle a finished job once (a second call returns it unchanged); its cost breakdown lands in `job.cost`."""
    with transaction.atomic():
        job = Job.objects.select_for_update().select_related("buyer").get(pk=job_id)
        if job.settled_at is not None:
            return job
        if job.state not in Job.FINAL_STATES:
            raise Conflict(f"job {job.pk} is {job.state}; only a finished job is settled", code="job_not_finished")
        ref = selectors.job_ref(job.pk)
        held = ledger_selectors.escrow_held(user=job.buyer, job_ref=ref)
        # Work is paid when it reached the buyer: a done job, and a job that ran and then was cancelled or failed
        # pays the steps that went through every hop (its pipeline record), never the step in flight.
        pays = job.state == Job.State.DONE or (
            job.state in (Job.State.CANCELLED, Job.State.FAILED) and job.started_at is not None
        )
        lines = work_lines(job) if pays else []
        replays = replay_lines(job) if pays else []
        paid = sum(line["payment"] for line in lines)
        fee = sum(line["fee"] for line in lines)
        if held and paid:
            ledger_services.settle_job(
                job_ref=ref, buyer=job.buyer, payouts=_payouts(lines), fee=fee, platform_payouts=_payouts(replays)
            )
        elif held:
            ledger_services.refund_escrow(user=job.buyer, job_ref=ref)
            replays = []
        job.cost = {
            "max_price": job.max_price,
            "escrowed": held,
            "paid": paid,
            "fee": fee,
            "provider_receipts": paid - fee,
            "refunded": held - paid,
            "lines": lines,
            "platform_paid": sum(line["provider_receipt"] for line in replays),
            "platform_lines": replays,
        }
        job.settled_at = timezone.now()
        job.save(update_fields=["cost", "settled_at"])
        # The job ended and its slots are free: the dashboards' tokens served and free slots changed.
        transaction.on_commit(overview.publish_figures, robust=True)
    return job


def work_lines(job: Job) -> list[dict[str, Any]]:
    """One line per placement of the job's pipeline: its layer-tokens, price, payment, fee and receipt."""
    if job.auction_round_id is None:
        return []  # placed outside the auction (a test's placement): no price was agreed, nothing is charged
    terms = {
        a.hop: a
        for a in Assignment.objects.filter(job=job, auction_round_id=job.auction_round_id).select_related("shard")
    }
    lines = []
    for entry in job.pipeline:
        term = terms.get(entry["hop"])
        until = entry["until_step"] or 0
        tokens = step_tokens(entry["from_step"], until, prompt_tokens=job.prompt_tokens)
        if term is None or tokens == 0:
            continue
        work = term.shard.n_layers * tokens
        payment = term.unit_price * work
        fee = platform_fee(payment, term.ask * work, settings.MARKET_FEE_BPS)
        lines.append(
            {
                "hop": entry["hop"],
                "shard": entry["shard"],
                "provider": entry["provider"],
                "provider_name": entry.get("provider_name", ""),
                "from_step": entry["from_step"],
                "until_step": until,
                "layer_tokens": work,
                "unit_price": term.unit_price,
                "payment": payment,
                "fee": fee,
                "provider_receipt": payment - fee,
            }
        )
    return lines


def replay_lines(job: Job) -> list[dict[str, Any]]:
    """The replays the platform pays for: after the server running the job died, each new placement first redid
    the steps the lost runner's had served on its hop (`replayed_steps`, recorded once the replay is complete), so
    the buyer's tokens could go on. That is the platform's failure, not the buyer's (who pays each step once) nor
    the provider's: the platform pays the provider at the hop's cleared price, with no fee. A replacement after a
    provider's failure replays too, unpaid (docs/pricing.md)."""
    if job.auction_round_id is None:
        return []
    terms = {
        a.hop: a
        for a in Assignment.objects.filter(job=job, auction_round_id=job.auction_round_id).select_related("shard")
    }
    lines = []
    for index, entry in enumerate(job.pipeline):
        before = [e for e in job.pipeline[:index] if e["hop"] == entry["hop"]]
        replayed = int(entry.get("replayed_steps") or 0)
        term = terms.get(entry["hop"])
        if term is None or not replayed or not before or before[-1].get("ended") != RUNNER_LOST:
            continue
        work = term.shard.n_layers * step_tokens(0, replayed, prompt_tokens=job.prompt_tokens)
        payment = term.unit_price * work
        lines.append(
            {
                "hop": entry["hop"],
                "shard": entry["shard"],
                "provider": entry["provider"],
                "provider_name": entry.get("provider_name", ""),
                "from_step": 0,
                "until_step": replayed,
                "layer_tokens": work,
                "unit_price": term.unit_price,
                "payment": payment,
                "fee": 0,
                "provider_receipt": payment,
                "paid_by": "platform",
            }
        )
    return lines


def step_tokens(from_step: int, until_step: int, *, prompt_tokens: int) -> int:
    """Tokens a hop processed in steps [from_step, until_step): the prompt at step 0, one token per later step."""
    if until_step <= from_step:
        return 0
    return (prompt_tokens if from_step == 0 else 0) + (until_step - max(from_step, 1))


def _payouts(lines: list[dict[str, Any]]) -> list[tuple[User, int]]:
    owners = dict(Provider.objects.filter(pk__in={line["provider"] for line in lines}).values_list("pk", "user"))
    users = User.objects.in_bulk(set(owners.values()))
    return [(users[owners[line["provider"]]], line["provider_receipt"]) for line in lines]
