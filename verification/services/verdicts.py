"""Verdicts and what they move, each exactly once: the dispute's state changes from open to decided in one
conditional UPDATE, and everything else happens in the same transaction, under its own idempotency key.

Fraud: the cheater's stake is slashed on chain with the evidence hash (the challenger's share to its wallet), its
pay for the job reversed and the buyer refunded in full, the challenger's bond returned, the cheater barred with
reliability 0, and the job run again for free with top priority. No fraud: a challenger's bond goes to the
provider(s) it accused, and the job's earnings are released by the window as usual.
"""

from __future__ import annotations

import hashlib
import json
import logging
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from config.errors import MarketError
from ledger import services as ledger_services
from ledger.chain import bridge
from ledger.chain.models import Wallet
from ledger.services import chain as chain_services
from ledger.services import disputes as money
from ledger.services import issuance
from market import overview
from market import selectors as market_selectors
from market.models import Job, Provider
from market.services import jobs as market_jobs
from verification import selectors, tolerance
from verification.models import Dispute

log = logging.getLogger(__name__)
TOP_PRIORITY = 4  # the auction counts at most four priority levels


def _decide(dispute: Dispute, state: str, reason: str, evidence: dict[str, Any], figures: dict[str, Any]) -> bool:
    evidence_hash = "0x" + hashlib.sha256(json.dumps(evidence, sort_keys=True).encode()).hexdigest() if evidence else ""
    referee = dict(dispute.referee) | figures
    referee.setdefault("tolerance", tolerance.describe())
    decided = (
        Dispute.objects.filter(pk=dispute.pk)
        .exclude(state__in=Dispute.CLOSED)
        .update(
            state=state,
            reason=reason[:2000],
            evidence=evidence,
            evidence_hash=evidence_hash,
            referee=referee,
            decided_at=timezone.now(),
            layer=evidence.get("layer") if isinstance(evidence.get("layer"), int) else None,
        )
    )
    dispute.refresh_from_db()
    return bool(decided)


def fraud(dispute: Dispute, *, reason: str, evidence: dict[str, Any] | None = None, default: bool = False) -> None:
    evidence = dict(evidence or {})
    evidence.setdefault("job", dispute.job_id)
    evidence.setdefault("step", dispute.step)
    evidence.setdefault("hop", dispute.hop)
    evidence.setdefault("session", str(dispute.session) if dispute.session else None)
    evidence["by_default"] = default
    with transaction.atomic():
        job = Job.objects.select_for_update().select_related("buyer", "model").get(pk=dispute.job_id)
        if not _decide(dispute, Dispute.State.FRAUD, reason, evidence, {}):
            return
        ref = market_selectors.job_ref(job.pk)
        if dispute.challenger is not None and dispute.bond:
            money.bond_return(user=dispute.challenger, amount=dispute.bond, job_ref=ref, key=f"bond-back:{dispute.pk}")
        if Dispute.objects.filter(job=job, state=Dispute.State.FRAUD).exclude(pk=dispute.pk).exists():
            # An audit and a challenge of one job may both prove the fraud: its consequences happen once per job.
            _release_unless_disputed(job)
            publish(dispute)
            return
        assert dispute.provider_id is not None
        cheater = Provider.objects.select_for_update().get(pk=dispute.provider_id)
        Provider.objects.filter(pk=cheater.pk).update(
            barred=True, reliability_permille=0, clean_streak=0, audits_failed=F("audits_failed") + 1
        )
        lines = (job.cost or {}).get("lines", [])
        honest = sum(int(line["provider_receipt"]) for line in lines if line["provider"] != cheater.pk)
        cheated = sum(int(line["provider_receipt"]) for line in lines if line["provider"] == cheater.pk)
        money.fraud_refund(
            job_ref=ref,
            buyer=job.buyer,
            cheater=cheater.user,
            cheater_pay=cheated,
            fee=int((job.cost or {}).get("fee", 0)),
            honest_pay=honest,
            key=f"fraud:{ref}",
        )
        _release_unless_disputed(job)
        _rerun(dispute, job)
    _slash(dispute, cheater)
    log.warning("dispute %s: fraud by provider %s: %s", dispute.pk, dispute.provider_id, reason)
    publish(dispute)


def no_fraud(dispute: Dispute, *, reason: str, **figures: Any) -> None:
    with transaction.atomic():
        if not _decide(dispute, Dispute.State.NO_FRAUD, reason, {}, figures):
            return
        job = Job.objects.get(pk=dispute.job_id)
        served = sorted({int(entry["provider"]) for entry in job.pipeline if entry.get("until_step")})
        Provider.objects.filter(pk__in=served).update(
            audits_passed=F("audits_passed") + 1, clean_streak=F("clean_streak") + 1
        )
        if dispute.challenger is not None and dispute.bond:
            accused = [dispute.provider_id] if dispute.provider_id else served
            owners = dict(Provider.objects.filter(pk__in=accused).values_list("pk", "user"))
            users = {p.pk: p.user for p in Provider.objects.filter(pk__in=accused).select_related("user")}
            share, rest = divmod(dispute.bond, len(accused))
            shares = [(users[pk], share + (rest if i == 0 else 0)) for i, pk in enumerate(accused) if pk in owners]
            shares = [(user, amount) for user, amount in shares if amount > 0]  # a bond smaller than the crowd
            money.bond_award(shares=shares, job_ref=market_selectors.job_ref(job.pk), key=f"bond-award:{dispute.pk}")
        _release_unless_disputed(job)
    publish(dispute)


def _release_unless_disputed(job: Job) -> None:
    if not Dispute.objects.filter(job=job).exclude(state__in=Dispute.CLOSED).exists():
        ledger_services.set_earnings_hold(job_ref=market_selectors.job_ref(job.pk), on_hold=False)


def _rerun(dispute: Dispute, job: Job) -> None:
    """The same request again, paid by the platform (a mint the slash backs), at the top of the book."""
    ref = f"rerun:{market_selectors.job_ref(job.pk)}"
    issuance.mint_as_system(to_user=job.buyer, amount=job.max_price, key=ref, memo=f"rerun of job {job.pk} after fraud")
    try:
        again = market_jobs.job_create(
            buyer=job.buyer,
            model=job.model,
            messages=job.messages,
            max_new_tokens=job.max_new_tokens,
            temperature=Decimal(job.temperature),
            top_p=Decimal(job.top_p),
            seed=job.seed,
            max_price=job.max_price,
        )
    except MarketError as exc:  # the model cannot run any more: the buyer keeps the minted price
        log.warning("dispute %s: the rerun of job %s could not be posted: %s", dispute.pk, job.pk, exc)
        return
    Job.objects.filter(pk=again.pk).update(priority=TOP_PRIORITY)
    Dispute.objects.filter(pk=dispute.pk).update(evidence=dispute.evidence | {"rerun_job": again.pk})
    dispute.evidence = dispute.evidence | {"rerun_job": again.pk}


def _slash(dispute: Dispute, cheater: Provider) -> None:
    """The slash on chain (queued in the outbox, sent once per evidence hash); without a chain, nothing to slash."""
    if not bridge.enabled():
        return
    wallet = Wallet.objects.filter(user=cheater.user).exclude(address=None).first()
    stake = wallet.stake_active + wallet.stake_unbonding if wallet is not None else 0
    amount = min(settings.SLASH_AMOUNT, stake) if stake else settings.SLASH_AMOUNT
    challenger = None
    if dispute.challenger is not None:
        mine = Wallet.objects.filter(user=dispute.challenger).exclude(address=None).first()
        challenger = mine.address if mine is not None else None
    try:
        chain_services.slash_request(
            provider=cheater.user, amount=amount, evidence_hash=dispute.evidence_hash, challenger=challenger
        )
    except MarketError as exc:
        log.warning("dispute %s: the slash could not be queued: %s", dispute.pk, exc)


def publish(dispute: Dispute) -> None:
    """The job's stream hears the verdict (its watchers see the verification state change), and the dashboards their
    counts of audits, challenges and verdicts."""
    transaction.on_commit(lambda: selectors.publish_verification(dispute.job_id))
    transaction.on_commit(overview.publish_figures, robust=True)
