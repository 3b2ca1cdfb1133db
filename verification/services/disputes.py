"""Disputes: a buyer's challenge or a random audit of a finished job, driven to a verdict by the referee.

`dispute_advance` is one turn of a state machine kept in the database, so a dispute survives any process dying:
phase 1 re-runs the job's hops from its transcript; phase 2 asks the guilty-looking hop's provider to reveal layers
(bisection: each answer halves the range), then re-executes the one layer where its states first leave the
referee's, from its own revealed input. Each turn is claimed with a short lease, so two workers never run one.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from datetime import timedelta
from typing import Any

import numpy as np
import onnxruntime as ort
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from config.errors import Conflict
from inference import commitment
from inference.runtime import StepOutput
from ledger import services as ledger_services
from ledger.services import disputes as money
from market import scheduling
from market import selectors as market_selectors
from market.models import Job, Provider
from transport.messages import ProviderReveal
from verification import layers, referee, tolerance
from verification.models import Commitment, Dispute, Reveal, Transcript
from verification.services import transcripts, verdicts

log = logging.getLogger(__name__)
LEASE = timedelta(seconds=120)


def challenge_open(*, user: User, job_id: int) -> Dispute:
    """A buyer challenges its finished job within the window, with a bond: 404 for another's job, 409 outside the
    window or a second time, 402 when the bond is short (nothing changes then)."""
    job = market_selectors.job_for_buyer(buyer=user, job_id=job_id)
    transcript = transcripts.job_transcript(job)
    if job.settled_at is None or transcript is None:
        raise Conflict(f"job {job.pk} has no finished work to check", code="nothing_to_challenge")
    if timezone.now() > job.settled_at + timedelta(seconds=settings.CHALLENGE_WINDOW_SECONDS):
        raise Conflict(f"the challenge window of job {job.pk} is over", code="challenge_window_over")
    ref = market_selectors.job_ref(job.pk)
    with transaction.atomic():
        Job.objects.select_for_update().filter(pk=job.pk).first()  # two challenges at once: one waits for the other
        if Dispute.objects.filter(job=job, kind=Dispute.Kind.CHALLENGE).exists():
            raise Conflict(f"job {job.pk} is challenged already", code="already_challenged")
        bond = settings.CHALLENGE_BOND
        money.bond_post(user=user, amount=bond, job_ref=ref, key=f"bond:{ref}")
        dispute = Dispute.objects.create(job=job, kind=Dispute.Kind.CHALLENGE, challenger=user, bond=bond)
        _hold(job)
        verdicts.publish(dispute)
    transaction.on_commit(lambda: _nudge(dispute.pk))
    return dispute


def audit_open(*, job_id: int) -> Dispute | None:
    """Audit a finished job (once); None when it has no transcript."""
    job = Job.objects.get(pk=job_id)
    if not Transcript.objects.filter(job=job).exists():
        return None
    with transaction.atomic():
        dispute, created = Dispute.objects.get_or_create(job=job, kind=Dispute.Kind.AUDIT)
        if created:
            _hold(job)
            verdicts.publish(dispute)
    return dispute


def _hold(job: Job) -> None:
    """Earnings of a job under dispute are never released before the verdict."""
    ledger_services.set_earnings_hold(job_ref=market_selectors.job_ref(job.pk), on_hold=True)


def _nudge(dispute_id: int) -> None:
    scheduling.disputes_soon(dispute_id)


# --- the state machine -----------------------------------------------------------------------------------------


def disputes_advance() -> int:
    """One turn of every dispute still open (the periodic task); returns how many turned."""
    ids = list(Dispute.objects.exclude(state__in=Dispute.CLOSED).order_by("pk").values_list("pk", flat=True)[:50])
    return sum(dispute_advance(dispute_id=pk) for pk in ids)


def dispute_advance(*, dispute_id: int) -> bool:
    """Take the next step of a dispute if no one else is; False when it was leased elsewhere or is closed."""
    now = timezone.now()
    claimed = (
        Dispute.objects.filter(pk=dispute_id)
        .exclude(state__in=Dispute.CLOSED)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(lease_until=now + LEASE)
    )
    if not claimed:
        return False
    dispute = Dispute.objects.select_related("job", "provider", "challenger").get(pk=dispute_id)
    try:
        if dispute.state == Dispute.State.OPEN:
            _phase_one(dispute)
        elif dispute.state == Dispute.State.REVEALING:
            _phase_two(dispute)
    finally:
        Dispute.objects.filter(pk=dispute_id).update(lease_until=None)
    return True


def _phase_one(dispute: Dispute) -> None:
    transcript = transcripts.job_transcript(dispute.job)
    if transcript is None:
        verdicts.no_fraud(dispute, reason="the job's transcript is gone: nothing can be checked")
        return
    started = time.perf_counter()
    works = transcripts.hop_works(transcript)
    finding = referee.locate(works, steps=transcript.steps)
    figures = {
        "tolerance": tolerance.describe(),
        "runtime": f"onnxruntime {ort.__version__}",
        "phase1_s": round(time.perf_counter() - started, 3),
        "steps_rerun": transcript.steps * len(works),
    }
    if finding is None:
        verdicts.no_fraud(dispute, reason="every hop's output follows from its input within the tolerance", **figures)
        return
    entry = _served_by(dispute.job, hop=finding.hop, step=finding.step)
    provider = Provider.objects.get(pk=entry["provider"])
    n_layers = int(transcript.hops[finding.hop]["end_layer"]) - int(transcript.hops[finding.hop]["first_layer"])
    Dispute.objects.filter(pk=dispute.pk).update(
        state=Dispute.State.REVEALING,
        step=finding.step,
        hop=finding.hop,
        provider=provider,
        session=uuid.UUID(entry["session"]),
        layer_low=0,
        layer_high=n_layers,
        deadline=timezone.now() + timedelta(seconds=settings.REVEAL_DEADLINE_SECONDS),
        referee=figures | {"phase1_excess": round(finding.excess, 3), "layers_recomputed": 0},
    )
    dispute.refresh_from_db()
    verdicts.publish(dispute)
    _phase_two(dispute)


def _served_by(job: Job, *, hop: int, step: int) -> dict[str, Any]:
    """The pipeline entry (provider, session) that served `hop` at `step`."""
    for entry in job.pipeline:
        if entry["hop"] == hop and entry["from_step"] <= step < (entry["until_step"] or 0):
            return dict(entry)
    raise LookupError(f"job {job.pk}: no provider served hop {hop} at step {step}")


def _phase_two(dispute: Dispute) -> None:
    """Bisection over the hop's layers with the provider's reveals, then the proof (or not) at one layer."""
    assert dispute.step is not None and dispute.hop is not None and dispute.session is not None
    step = dispute.step
    missing = _missing_commitments(dispute)
    if missing is not None:
        verdicts.fraud(dispute, reason=f"it sent no commitment for step {missing}: it cannot stand behind its work")
        return
    transcript = transcripts.job_transcript(dispute.job)
    assert transcript is not None
    work = transcripts.hop_works(transcript)[dispute.hop]
    n = _n_layers(transcript, dispute.hop)
    ours: np.ndarray | None = None
    while True:
        low, high = int(dispute.layer_low or 0), int(dispute.layer_high or 0)
        if low < high:
            needed = [(low + high) // 2]  # bisection: does its layer there agree with the referee's?
        elif low == n:
            needed = [n - 1]  # every layer followed: its output against its own last layer
        else:
            needed = [low - 1, low] if low > 0 else [low]  # the proof: layer `low` from its own input
        revealed = {}
        for layer in needed:
            states = _revealed(dispute, layer)
            if states is None:
                _ask_or_default(dispute, layer)
                return
            if isinstance(states, str):
                verdicts.fraud(dispute, reason=f"its reveal of layer {layer} does not open its commitments: {states}")
                return
            revealed[layer] = states
        if low < high:
            mid = needed[0]
            if ours is None:
                ours = referee.referee_states(work, step=step)
            agrees = tolerance.LAYER.excess(revealed[mid][step], ours[mid]) <= 1
            _set_range(dispute, (mid + 1, high) if agrees else (low, mid))
        elif low == n:
            _judge_output(dispute, work, revealed[n - 1][step], transcript)
            return
        elif _judge_layer(dispute, work, low, transcript):
            return
        else:
            _set_range(dispute, (low + 1, low + 1))  # it follows: look at the next layer


def _n_layers(transcript: Transcript, hop: int) -> int:
    return int(transcript.hops[hop]["end_layer"]) - int(transcript.hops[hop]["first_layer"])


def _set_range(dispute: Dispute, bounds: tuple[int, int]) -> None:
    dispute.layer_low, dispute.layer_high = bounds
    Dispute.objects.filter(pk=dispute.pk).update(layer_low=bounds[0], layer_high=bounds[1])


def _missing_commitments(dispute: Dispute) -> int | None:
    """The first step up to the dispute's that the provider served without committing to it. A provider whose
    session ended because its connection was lost (it was replaced) is excused: commitments travel in batches and
    the last of them may have been lost with it. Its reveals are then judged without proofs for those steps, and
    the layers must still follow from one another (a lie cannot)."""
    assert dispute.step is not None and dispute.session is not None
    if _uncommitted_excused(dispute):
        return None
    have = set(
        Commitment.objects.filter(session=dispute.session, step__lte=dispute.step).values_list("step", flat=True)
    )
    return next((s for s in range(dispute.step + 1) if s not in have), None)


def _uncommitted_excused(dispute: Dispute) -> bool:
    """Whether the accused session ended by a failure (the runner replaced it) rather than with its job."""
    entry = next((e for e in dispute.job.pipeline if e.get("session") == str(dispute.session)), None)
    return entry is not None and str(entry.get("ended", "")) not in Job.FINAL_STATES


def _revealed(dispute: Dispute, layer: int) -> dict[int, np.ndarray] | str | None:
    """The provider's valid reveal of `layer` for steps 0..step ({step: [S, H]}), the problem with an invalid one,
    or None when it has not answered."""
    reveal = dispute.reveals.filter(layer=layer, valid__isnull=False).order_by("-valid", "pk").first()
    if reveal is None:
        return None
    if not reveal.valid:
        return reveal.problem or "invalid"
    with np.load(io.BytesIO(bytes(reveal.states))) as saved:
        return {int(name[1:]): saved[name] for name in saved.files}


def _ask_or_default(dispute: Dispute, layer: int) -> None:
    """Ask the provider to reveal `layer` (again when it reconnected meanwhile), or rule against it once the
    reveal's deadline passed: the chess clock runs while it is offline too."""
    assert dispute.provider is not None and dispute.step is not None
    reveal = dispute.reveals.filter(layer=layer, valid__isnull=True).first()
    now = timezone.now()
    if reveal is None:
        reveal = Reveal.objects.create(
            dispute=dispute, request=uuid.uuid4().hex, layer=layer, first_step=0, last_step=dispute.step
        )
        dispute.deadline = now + timedelta(seconds=settings.REVEAL_DEADLINE_SECONDS)
        Dispute.objects.filter(pk=dispute.pk).update(request=reveal.request, deadline=dispute.deadline)
    if dispute.deadline is not None and now > dispute.deadline:
        verdicts.fraud(dispute, reason=f"it did not reveal layer {layer} before the deadline", default=True)
        return
    provider = Provider.objects.get(pk=dispute.provider.pk)
    if provider.state != Provider.State.ONLINE or not provider.channel_name or provider.channel_name == reveal.sent_to:
        return
    asked = ProviderReveal(
        request=reveal.request, session=str(dispute.session), layer=layer, first_step=0, last_step=dispute.step
    )
    Reveal.objects.filter(pk=reveal.pk).update(sent_to=provider.channel_name)
    async_to_sync(get_channel_layer().send)(provider.channel_name, asked.event())


def _judge_layer(dispute: Dispute, work: referee.HopWork, index: int, transcript: Transcript) -> bool:
    """Re-execute layer `index` of the hop from the provider's revealed input; True when that decided it (fraud)."""
    assert dispute.step is not None
    claimed = _revealed(dispute, index)
    assert isinstance(claimed, dict)
    if index == 0:
        inputs = [np.asarray(work.inputs[s]) for s in range(dispute.step + 1)]
    else:
        before = _revealed(dispute, index - 1)
        assert isinstance(before, dict)
        inputs = [before[s] for s in range(dispute.step + 1)]
    first_layer = int(transcript.hops[int(dispute.hop or 0)]["first_layer"])
    runtime = layers.one_layer(dispute.job.model, first_layer + index)
    excess, ours = referee.layer_excess(runtime, inputs, claimed[dispute.step])
    figures = dict(dispute.referee)
    figures["layers_recomputed"] = int(figures.get("layers_recomputed", 0)) + 1
    Dispute.objects.filter(pk=dispute.pk).update(referee=figures)
    dispute.referee = figures
    if excess <= 1:
        return False
    evidence = {
        "layer": first_layer + index,
        "step": dispute.step,
        "hop": dispute.hop,
        "session": str(dispute.session),
        "input_digest": referee.digest(*inputs),
        "claimed_digest": referee.digest(claimed[dispute.step]),
        "referee_digest": referee.digest(ours),
        "excess": round(excess, 3),
    }
    verdicts.fraud(
        dispute,
        reason=f"layer {first_layer + index} at step {dispute.step} does not follow from its own input "
        f"({excess:.1f}× the tolerance)",
        evidence=evidence,
    )
    return True


def _judge_output(dispute: Dispute, work: referee.HopWork, state: np.ndarray, transcript: Transcript) -> None:
    """Every layer followed: judge what the provider returned against its own last layer's committed states."""
    assert dispute.step is not None and dispute.hop is not None
    recorded = work.outputs[dispute.step]
    if transcript.hops[dispute.hop].get("has_head"):
        logits = referee.head_logits(layers.head_weights(dispute.job.model), state[-1], eps=layers.rms_eps(dispute.job))
        result = StepOutput(output=logits.reshape(1, -1), layer_hidden=state[None])
        excess = referee.output_excess(result, recorded, has_head=True)
        where = "its head's answer"
    else:
        excess = tolerance.HOP.excess(np.asarray(recorded, dtype=np.float32), state[None])
        where = "its output"
    if excess <= 1:
        verdicts.no_fraud(dispute, reason="every layer it revealed follows within the tolerance")
        return
    evidence = {
        "layer": "head" if transcript.hops[dispute.hop].get("has_head") else "output",
        "step": dispute.step,
        "hop": dispute.hop,
        "session": str(dispute.session),
        "claimed_digest": referee.digest(np.asarray(recorded[0] if isinstance(recorded, tuple) else recorded)),
        "state_digest": referee.digest(state),
        "excess": round(excess, 3),
    }
    verdicts.fraud(
        dispute,
        reason=f"{where} at step {dispute.step} does not follow from its own committed last layer "
        f"({excess:.1f}× the tolerance)",
        evidence=evidence,
    )


# --- reveals, from the provider consumer ------------------------------------------------------------------------


def reveal_record(
    *, provider_id: int, request: str, session: uuid.UUID, layer: int, states: dict[int, np.ndarray], proofs: list[Any]
) -> Reveal | None:
    """A provider's answer to a reveal: checked against its commitments, kept, and the dispute nudged. An answer
    to nothing it was asked is ignored (None)."""
    reveal = (
        Reveal.objects.select_related("dispute")
        .filter(request=request, valid__isnull=True, dispute__provider_id=provider_id, dispute__session=session)
        .first()
    )
    if reveal is None or reveal.layer != layer:
        return None
    problem = _reveal_problem(reveal, states, proofs)
    buffer = io.BytesIO()
    if not problem:
        np.savez(buffer, **{f"s{s}": np.asarray(states[s], dtype=np.float32) for s in states})  # type: ignore[arg-type]
    Reveal.objects.filter(pk=reveal.pk, valid__isnull=True).update(
        states=buffer.getvalue(), valid=not problem, problem=problem[:300], answered_at=timezone.now()
    )
    transaction.on_commit(lambda: _nudge(reveal.dispute_id))
    return reveal


def _reveal_problem(reveal: Reveal, states: dict[int, np.ndarray], proofs: list[Any]) -> str:
    steps = range(reveal.first_step, reveal.last_step + 1)
    if sorted(states) != list(steps) or len(proofs) != len(steps):
        asked = f"steps {steps.start}-{steps.stop - 1}"
        return f"it revealed steps {sorted(states)[:5]}… with {len(proofs)} proofs, not {asked}"
    assert reveal.dispute.session is not None
    roots = dict(Commitment.objects.filter(session=reveal.dispute.session, step__in=steps).values_list("step", "root"))
    transcript = transcripts.job_transcript(reveal.dispute.job)
    assert transcript is not None
    works = transcripts.hop_works(transcript)
    inputs = works[reveal.dispute.hop or 0].inputs
    n_layers = _n_layers(transcript, reveal.dispute.hop or 0)
    excused = _uncommitted_excused(reveal.dispute)
    for position, step in enumerate(steps):
        state = states[step]
        if state.ndim != 2 or state.shape[0] != np.asarray(inputs[step]).shape[1]:
            return f"step {step}: states of shape {list(state.shape)} do not cover the step's positions"
        if step not in roots and excused:
            continue  # its commitment was lost with its connection (see _missing_commitments)
        if not commitment.verify(state, proofs[position], roots.get(step, ""), index=reveal.layer, count=n_layers):
            return f"step {step}: the states do not open its commitment"
    return ""
