"""Disputes driven to their verdicts (verification/services/disputes.py, verdicts.py) on the tiny model: the referee
re-runs the job, bisects the lying hop's layers with its provider's reveals, proves the lie at the layer it was
told or at the output, and the verdict moves the money once: the buyer refunded in full and the bond returned, the
cheater barred, the job run again; honest work challenged pays the bond to its providers. The ledger adds up after
every verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from ledger import selectors as ledger_selectors
from ledger.models import Account, PendingRelease
from market import selectors as market_selectors
from market.models import Job, Provider
from verification import selectors
from verification.models import Commitment, Dispute, Reveal, Transcript
from verification.services import disputes, verdicts

if TYPE_CHECKING:  # the fixtures' types (pytest loads conftest itself)
    from tests.verification.conftest import Serve, Served

pytestmark = pytest.mark.django_db

GRANT = 1_000_000  # settings.SIGNUP_GRANT
MAX_PRICE = 100_000  # the conftest's bid
BOND = 50_000


@pytest.fixture(autouse=True)
def _bond(settings: Any) -> None:
    settings.CHALLENGE_BOND = BOND


def drive(served: Served, dispute: Dispute, *, rounds: int = 8) -> list[int]:
    """Turn the dispute, the accused provider answering every reveal honestly from what it committed to, until a
    verdict; returns the layers it was asked for, in order."""
    asked: list[int] = []
    for _ in range(rounds):
        disputes.dispute_advance(dispute_id=dispute.pk)
        dispute.refresh_from_db()
        if dispute.state in Dispute.CLOSED:
            return asked
        reveal = Reveal.objects.select_related("dispute").get(dispute=dispute, valid__isnull=True)
        asked.append(reveal.layer)
        states, proofs = served.answer(reveal)
        disputes.reveal_record(
            provider_id=dispute.provider_id or 0,
            request=reveal.request,
            session=served.sessions[0],
            layer=reveal.layer,
            states=states,
            proofs=proofs,
        )
    raise AssertionError(f"no verdict after {rounds} turns")


def pending_of(user: User, served: Served) -> int:
    return ledger_selectors.pending_for_job(provider=user, job_ref=market_selectors.job_ref(served.job.pk))


def assert_ledger_sound() -> None:
    drift = ledger_selectors.ledger_drift()
    assert drift.ok, drift


@pytest.mark.parametrize("layer", [0, 1])
def test_bisection_finds_the_layer_that_lied_and_proves_it_from_the_providers_own_input(
    serve: Serve, alice: User, layer: int
) -> None:
    served = serve(alice, lie_at=1, lie_layer=layer)
    dispute = disputes.audit_open(job_id=served.job.pk)
    assert dispute is not None
    assert drive(served, dispute) == [1, 0], "the middle layer, then the half that disagrees"
    assert dispute.state == Dispute.State.FRAUD
    assert dispute.layer == layer
    assert dispute.reason.startswith(f"layer {layer} at step 1 does not follow from its own input")
    evidence = dispute.evidence
    assert (evidence["layer"], evidence["step"], evidence["hop"], evidence["by_default"]) == (layer, 1, 0, False)
    assert evidence["session"] == str(served.sessions[0]) and evidence["excess"] > 1
    assert dispute.evidence_hash.startswith("0x") and len(dispute.evidence_hash) == 66
    assert dispute.referee["layers_recomputed"] == 1


def test_an_output_that_does_not_follow_from_the_committed_last_layer_is_fraud_at_the_output(
    serve: Serve, alice: User
) -> None:
    served = serve(alice, lie_at=1)  # honest layers, a lying output
    dispute = disputes.audit_open(job_id=served.job.pk)
    assert dispute is not None
    assert drive(served, dispute) == [1], "its last layer agrees with the referee's: only its output is left"
    assert dispute.state == Dispute.State.FRAUD and dispute.layer is None
    assert (dispute.evidence["layer"], dispute.evidence["step"]) == ("output", 1)
    assert "its output at step 1 does not follow from its own committed last layer" in dispute.reason


def test_a_proven_fraud_refunds_the_buyer_returns_the_bond_bars_the_cheater_and_runs_the_job_again(
    serve: Serve, alice: User, carol: User, dave: User
) -> None:
    served = serve(alice, lie_at=1, lie_layer=1)
    cheater, honest = served.providers
    honest_pay = served.job.cost["lines"][1]["provider_receipt"]
    dispute = disputes.challenge_open(user=alice, job_id=served.job.pk)
    assert selectors.job_verification(served.job)["state"] == "checking"
    drive(served, dispute)
    assert dispute.state == Dispute.State.FRAUD

    barred = Provider.objects.get(pk=cheater.pk)
    assert (barred.barred, barred.reliability_permille, barred.clean_streak, barred.audits_failed) == (True, 0, 0, 1)
    untouched = Provider.objects.get(pk=honest.pk)
    assert (untouched.barred, untouched.audits_failed, untouched.audits_passed) == (False, 0, 0)

    rerun = Job.objects.get(pk=dispute.evidence["rerun_job"])
    assert (rerun.buyer, rerun.state, rerun.priority, rerun.messages) == (
        alice,
        Job.State.QUEUED,
        4,
        served.job.messages,
    )
    # Everything the job cost came back and the bond with it; the rerun's bid is escrowed from a mint.
    balances = ledger_selectors.balances_of(user=alice)
    assert (balances.available, balances.escrow) == (GRANT, rerun.max_price)
    assert ledger_selectors.platform_balance(kind=Account.Kind.CHALLENGE_BONDS) == 0
    assert pending_of(carol, served) == 0, "the cheater's pay is reversed"
    assert pending_of(dave, served) == honest_pay, "the honest provider's pay stands"
    assert not PendingRelease.objects.filter(on_hold=True).exists(), "no dispute is open: the hold is lifted"
    assert selectors.job_verification(served.job)["state"] == "fraud"
    assert_ledger_sound()


def test_an_audit_and_a_challenge_that_both_prove_the_fraud_refund_and_bar_once(
    serve: Serve, alice: User, carol: User
) -> None:
    served = serve(alice, lie_at=1, lie_layer=0)
    audit = disputes.audit_open(job_id=served.job.pk)
    assert audit is not None
    challenged = disputes.challenge_open(user=alice, job_id=served.job.pk)
    drive(served, audit)
    assert audit.state == Dispute.State.FRAUD
    assert PendingRelease.objects.filter(on_hold=True).exists(), "the challenge is still open: the hold stays"
    drive(served, challenged)
    assert challenged.state == Dispute.State.FRAUD
    assert Job.objects.count() == 2, "the job is run again once"
    rerun = Job.objects.exclude(pk=served.job.pk).get()
    balances = ledger_selectors.balances_of(user=alice)
    assert (balances.available, balances.escrow) == (GRANT, rerun.max_price), "refunded once, the bond returned"
    assert ledger_selectors.platform_balance(kind=Account.Kind.CHALLENGE_BONDS) == 0
    assert Provider.objects.get(pk=served.providers[0].pk).audits_failed == 1
    assert pending_of(carol, served) == 0
    assert not PendingRelease.objects.filter(on_hold=True).exists()
    assert_ledger_sound()


def test_a_verdict_is_applied_once(serve: Serve, alice: User) -> None:
    served = serve(alice, lie_at=1)
    dispute = disputes.challenge_open(user=alice, job_id=served.job.pk)
    drive(served, dispute)
    before = (ledger_selectors.ledger_drift(), ledger_selectors.balances_of(user=alice), Job.objects.count())
    verdicts.fraud(dispute, reason="again")
    verdicts.no_fraud(dispute, reason="and the other way")
    assert (ledger_selectors.ledger_drift(), ledger_selectors.balances_of(user=alice), Job.objects.count()) == before
    assert Provider.objects.get(pk=served.providers[0].pk).audits_failed == 1
    dispute.refresh_from_db()
    assert dispute.state == Dispute.State.FRAUD and dispute.reason != "again"
    assert disputes.dispute_advance(dispute_id=dispute.pk) is False, "a closed dispute takes no more turns"


def test_honest_work_challenged_pays_the_bond_to_its_providers(
    serve: Serve, alice: User, carol: User, dave: User
) -> None:
    served = serve(alice)
    paid = served.job.cost["paid"]
    dispute = disputes.challenge_open(user=alice, job_id=served.job.pk)
    assert PendingRelease.objects.filter(on_hold=True).count() == 2, "held while the challenge is open"
    assert drive(served, dispute) == [], "phase 1 finds nothing: no provider is asked anything"
    assert dispute.state == Dispute.State.NO_FRAUD
    assert dispute.reason == "every hop's output follows from its input within the tolerance"
    assert dispute.referee["steps_rerun"] == 2 * 3
    # Nobody was accused: the bond is shared by the providers that served the job.
    assert ledger_selectors.balances_of(user=carol).earnings == BOND // 2
    assert ledger_selectors.balances_of(user=dave).earnings == BOND // 2
    assert ledger_selectors.balances_of(user=alice).available == GRANT - paid - BOND
    for provider in served.providers:
        provider.refresh_from_db()
        assert (provider.audits_passed, provider.clean_streak, provider.barred) == (1, 1, False)
    assert not PendingRelease.objects.filter(on_hold=True).exists()
    assert selectors.job_verification(served.job)["state"] == "verified"
    assert_ledger_sound()


def test_an_audit_of_honest_work_moves_no_money(serve: Serve, alice: User) -> None:
    served = serve(alice)
    dispute = disputes.audit_open(job_id=served.job.pk)
    assert dispute is not None and disputes.audit_open(job_id=served.job.pk) == dispute, "one audit per job"
    before = ledger_selectors.ledger_drift()
    drive(served, dispute)
    assert dispute.state == Dispute.State.NO_FRAUD and dispute.bond == 0
    assert ledger_selectors.ledger_drift() == before
    assert Provider.objects.filter(audits_passed=1, clean_streak=1).count() == 2


def test_a_provider_that_sent_no_commitments_cannot_stand_behind_its_work(serve: Serve, alice: User) -> None:
    served = serve(alice, lie_at=1, commit=False)
    dispute = disputes.audit_open(job_id=served.job.pk)
    assert dispute is not None
    assert drive(served, dispute) == []
    assert dispute.state == Dispute.State.FRAUD
    assert dispute.reason == "it sent no commitment for step 0: it cannot stand behind its work"


def test_a_provider_replaced_after_a_lost_connection_is_judged_on_its_layers_not_its_lost_commitments(
    serve: Serve, alice: User
) -> None:
    """Commitments travel in batches: the last of them may be lost with the connection. A provider the runner
    replaced is excused for those, and a lie is still proven where it was told, from the states it reveals."""
    served = serve(alice, lie_at=1, lie_layer=1, commit=False)
    pipeline = served.job.pipeline
    pipeline[0]["ended"] = "provider_lost: the connection closed"
    Job.objects.filter(pk=served.job.pk).update(pipeline=pipeline)
    dispute = disputes.audit_open(job_id=served.job.pk)
    assert dispute is not None
    drive(served, dispute)
    assert dispute.state == Dispute.State.FRAUD, dispute.reason
    assert dispute.layer == 1 and "does not follow from its own input" in dispute.reason, dispute.reason


def test_a_missing_step_of_its_commitments_is_named(serve: Serve, alice: User) -> None:
    served = serve(alice, lie_at=2)
    Commitment.objects.filter(session=served.sessions[0], step=1).delete()
    dispute = disputes.audit_open(job_id=served.job.pk)
    assert dispute is not None
    drive(served, dispute)
    assert (dispute.state, dispute.step) == (Dispute.State.FRAUD, 2)
    assert dispute.reason.startswith("it sent no commitment for step 1")


def test_a_job_whose_transcript_is_gone_cannot_be_checked(serve: Serve, alice: User) -> None:
    served = serve(alice, lie_at=1)
    dispute = disputes.audit_open(job_id=served.job.pk)
    assert dispute is not None
    Transcript.objects.all().delete()
    drive(served, dispute)
    assert dispute.state == Dispute.State.NO_FRAUD
    assert dispute.reason == "the job's transcript is gone: nothing can be checked"
    assert disputes.audit_open(job_id=serve(alice, transcript=False).job.pk) is None, "no transcript, no audit"


def test_a_dispute_leased_by_another_worker_is_not_turned(serve: Serve, alice: User) -> None:
    served = serve(alice, lie_at=1)
    dispute = disputes.audit_open(job_id=served.job.pk)
    assert dispute is not None
    Dispute.objects.filter(pk=dispute.pk).update(lease_until=timezone.now() + disputes.LEASE)
    assert disputes.dispute_advance(dispute_id=dispute.pk) is False
    assert Dispute.objects.get(pk=dispute.pk).state == Dispute.State.OPEN
