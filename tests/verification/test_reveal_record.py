"""A provider's answer to a reveal (verification/services/disputes.py `reveal_record`), on a real dispute: a job whose
first hop lied at step 1, audited, re-run by the referee (phase 1) and now waiting for that provider to open its
layer 1 over steps 0-1. A reveal that opens the provider's commitments is kept; one with a wrong proof, a wrong
shape or wrong steps is kept as invalid with its problem, and the dispute's next turn rules fraud on it; an answer
to something that was not asked (an unknown or answered request, another provider, session or layer) is ignored,
and the provider's clock keeps running until it loses by default."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth.models import User
from django.utils import timezone

from inference import commitment
from market.models import Provider
from verification.models import Dispute, Reveal
from verification.services import disputes

if TYPE_CHECKING:  # the fixtures' types (pytest loads conftest itself)
    from tests.verification.conftest import Serve, Served

pytestmark = pytest.mark.django_db

Answer = tuple[dict[int, np.ndarray], list[Any]]


def _lied(serve: Serve, alice: User) -> tuple[Served, Dispute]:
    served = serve(alice, lie_at=1)  # its output at step 1 is off; its committed layers are honest
    dispute = disputes.audit_open(job_id=served.job.pk)
    assert dispute is not None
    disputes.dispute_advance(dispute_id=dispute.pk)  # phase 1 finds it, phase 2 asks for the middle layer
    dispute.refresh_from_db()
    return served, dispute


@pytest.fixture
def revealing(serve: Serve, alice: User) -> tuple[Served, Dispute, Reveal]:
    served, dispute = _lied(serve, alice)
    reveal = Reveal.objects.select_related("dispute").get(dispute=dispute)
    return served, dispute, reveal


def record(dispute: Dispute, reveal: Reveal, answer: Answer, **overrides: Any) -> Reveal | None:
    states, proofs = answer
    fields: dict[str, Any] = {
        "provider_id": dispute.provider_id,
        "request": reveal.request,
        "session": dispute.session,
        "layer": reveal.layer,
        "states": states,
        "proofs": proofs,
    }
    return disputes.reveal_record(**(fields | overrides))


def test_phase_one_names_the_lying_hop_and_asks_its_provider_for_the_middle_layer(
    revealing: tuple[Served, Dispute, Reveal],
) -> None:
    served, dispute, reveal = revealing
    assert (dispute.state, dispute.step, dispute.hop) == (Dispute.State.REVEALING, 1, 0)
    assert (dispute.provider_id, dispute.session) == (served.providers[0].pk, served.sessions[0])
    assert (dispute.layer_low, dispute.layer_high) == (0, 2)
    assert (reveal.layer, reveal.first_step, reveal.last_step, reveal.valid) == (1, 0, 1, None)
    assert dispute.request == reveal.request
    assert dispute.deadline is not None and dispute.deadline > timezone.now()


def test_a_reveal_is_sent_to_the_provider_online(serve: Serve, alice: User) -> None:
    channel = async_to_sync(get_channel_layer().new_channel)()
    Provider.objects.update(state=Provider.State.ONLINE, channel_name=channel)
    served, dispute = _lied(serve, alice)
    reveal = Reveal.objects.get(dispute=dispute)
    event = async_to_sync(get_channel_layer().receive)(channel)
    assert event == {
        "type": "provider.reveal",
        "request": reveal.request,
        "session": str(served.sessions[0]),
        "layer": 1,
        "first_step": 0,
        "last_step": 1,
    }
    assert reveal.sent_to == channel


def test_a_reveal_that_opens_the_commitments_is_kept_as_valid(
    revealing: tuple[Served, Dispute, Reveal], django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    served, dispute, reveal = revealing
    answer = served.answer(reveal)
    with django_capture_on_commit_callbacks() as nudges:
        assert record(dispute, reveal, answer) == reveal
    assert len(nudges) == 1, "the dispute is nudged once the reveal is committed"
    kept = Reveal.objects.get(pk=reveal.pk)
    assert (kept.valid, kept.problem) == (True, "")
    assert kept.answered_at is not None
    with np.load(io.BytesIO(bytes(kept.states))) as saved:
        assert sorted(saved.files) == ["s0", "s1"]
        for step in (0, 1):
            assert saved[f"s{step}"].tobytes() == answer[0][step].astype(np.float32).tobytes()
    assert Dispute.objects.get(pk=dispute.pk).state == Dispute.State.REVEALING, "judged at the next turn"


def _flip(state: np.ndarray) -> np.ndarray:
    flipped = np.array(state, dtype=np.float32)
    flipped.reshape(-1).view(np.uint32)[3] ^= np.uint32(1)
    return flipped


def _other_layers_proofs(served: Served, reveal: Reveal) -> Answer:
    states, _ = served.answer(reveal)
    return states, [commitment.proof(commitment.leaves(served.states[0][s]), 0) for s in (0, 1)]


def _tampered_state(served: Served, reveal: Reveal) -> Answer:
    states, proofs = served.answer(reveal)
    return {0: states[0], 1: _flip(states[1])}, proofs


def _tampered_sibling(served: Served, reveal: Reveal) -> Answer:
    states, proofs = served.answer(reveal)
    side, sibling = proofs[0][0]
    return states, [[[side, ("0" if sibling[0] != "0" else "1") + sibling[1:]]], proofs[1]]


def _other_side(served: Served, reveal: Reveal) -> Answer:
    states, proofs = served.answer(reveal)
    return states, [proofs[0], [["R" if side == "L" else "L", sibling] for side, sibling in proofs[1]]]


def _positions_short(served: Served, reveal: Reveal) -> Answer:
    states, proofs = served.answer(reveal)
    return {0: states[0][:-1], 1: states[1]}, proofs


def _flat(served: Served, reveal: Reveal) -> Answer:
    states, proofs = served.answer(reveal)
    return {0: states[0], 1: states[1].reshape(-1)}, proofs


def _whole_step(served: Served, reveal: Reveal) -> Answer:
    states, proofs = served.answer(reveal)
    return {0: states[0], 1: served.states[0][1]}, proofs


def _one_step(served: Served, reveal: Reveal) -> Answer:
    states, proofs = served.answer(reveal)
    return {0: states[0]}, proofs[:1]


def _extra_step(served: Served, reveal: Reveal) -> Answer:
    states, proofs = served.answer(reveal)
    return {**states, 2: served.states[0][2][1]}, [*proofs, proofs[1]]


def _one_proof_short(served: Served, reveal: Reveal) -> Answer:
    states, proofs = served.answer(reveal)
    return states, proofs[:1]


def _nothing(served: Served, reveal: Reveal) -> Answer:
    """What the consumer records when the agent answers no_states."""
    return {}, []


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [
        (_other_layers_proofs, "step 0: the states do not open its commitment"),
        (_tampered_state, "step 1: the states do not open its commitment"),
        (_tampered_sibling, "step 0: the states do not open its commitment"),
        (_other_side, "step 1: the states do not open its commitment"),
        (_positions_short, "step 0: states of shape [{short}, 64] do not cover the step's positions"),
        (_flat, "step 1: states of shape [64] do not cover the step's positions"),
        (_whole_step, "step 1: states of shape [2, 1, 64] do not cover the step's positions"),
        (_one_step, "it revealed steps [0]… with 1 proofs, not steps 0-1"),
        (_extra_step, "it revealed steps [0, 1, 2]… with 3 proofs, not steps 0-1"),
        (_one_proof_short, "it revealed steps [0, 1]… with 1 proofs, not steps 0-1"),
        (_nothing, "it revealed steps []… with 0 proofs, not steps 0-1"),
    ],
)
def test_a_reveal_that_does_not_open_the_commitments_is_invalid_and_loses_the_dispute(
    revealing: tuple[Served, Dispute, Reveal], spoil: Callable[[Served, Reveal], Answer], problem: str
) -> None:
    served, dispute, reveal = revealing
    problem = problem.format(short=served.job.prompt_tokens - 1)
    assert record(dispute, reveal, spoil(served, reveal)) == reveal
    kept = Reveal.objects.get(pk=reveal.pk)
    assert (kept.valid, kept.problem, bytes(kept.states)) == (False, problem, b"")
    assert kept.answered_at is not None
    disputes.dispute_advance(dispute_id=dispute.pk)
    dispute.refresh_from_db()
    assert dispute.state == Dispute.State.FRAUD
    assert dispute.reason == f"its reveal of layer 1 does not open its commitments: {problem}"
    assert dispute.evidence["by_default"] is False
    assert Provider.objects.get(pk=served.providers[0].pk).barred


def test_another_layers_states_with_their_own_proofs_are_not_the_asked_layer(
    revealing: tuple[Served, Dispute, Reveal],
) -> None:
    served, dispute, reveal = revealing
    states = {s: served.states[0][s][0] for s in (0, 1)}
    proofs = [commitment.proof(commitment.leaves(served.states[0][s]), 0) for s in (0, 1)]
    record(dispute, reveal, (states, proofs))
    assert Reveal.objects.get(pk=reveal.pk).valid is False


def _still_asked(dispute: Dispute, reveal: Reveal) -> None:
    kept = Reveal.objects.get(pk=reveal.pk)
    assert (kept.valid, kept.answered_at, bytes(kept.states)) == (None, None, b"")
    disputes.dispute_advance(dispute_id=dispute.pk)
    dispute.refresh_from_db()
    assert dispute.state == Dispute.State.REVEALING, "still waiting for the provider"
    assert list(Reveal.objects.filter(dispute=dispute).values_list("request", flat=True)) == [reveal.request]


@pytest.mark.parametrize("answer_to", ["unknown request", "another provider", "another session", "another layer"])
def test_an_answer_to_something_not_asked_is_ignored(revealing: tuple[Served, Dispute, Reveal], answer_to: str) -> None:
    served, dispute, reveal = revealing
    choices: dict[str, dict[str, Any]] = {
        "unknown request": {"request": "f" * 32},
        "another provider": {"provider_id": served.providers[1].pk},
        "another session": {"session": served.sessions[1]},
        "another layer": {"layer": 0},
    }
    assert record(dispute, reveal, served.answer(reveal), **choices[answer_to]) is None
    _still_asked(dispute, reveal)


def test_a_reveal_from_another_provider_of_the_same_owner_is_ignored(
    revealing: tuple[Served, Dispute, Reveal], carol: User
) -> None:
    served, dispute, reveal = revealing
    sibling = Provider.objects.create(user=carol, name="p0-other-machine")
    assert record(dispute, reveal, served.answer(reveal), provider_id=sibling.pk) is None
    _still_asked(dispute, reveal)


def test_a_request_is_answered_once_the_first_answer_stands(revealing: tuple[Served, Dispute, Reveal]) -> None:
    served, dispute, reveal = revealing
    good = served.answer(reveal)
    assert record(dispute, reveal, good) == reveal
    assert record(dispute, reveal, _tampered_state(served, reveal)) is None
    assert record(dispute, reveal, good) is None
    kept = Reveal.objects.get(pk=reveal.pk)
    assert (kept.valid, kept.problem) == (True, "")
    with np.load(io.BytesIO(bytes(kept.states))) as saved:
        assert saved["s1"].tobytes() == good[0][1].tobytes()


def test_a_provider_that_does_not_answer_in_time_loses_by_default(revealing: tuple[Served, Dispute, Reveal]) -> None:
    served, dispute, reveal = revealing
    record(dispute, reveal, served.answer(reveal), provider_id=served.providers[1].pk)  # not from the one asked
    Dispute.objects.filter(pk=dispute.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    disputes.dispute_advance(dispute_id=dispute.pk)
    dispute.refresh_from_db()
    assert dispute.state == Dispute.State.FRAUD
    assert dispute.reason == "it did not reveal layer 1 before the deadline"
    assert dispute.evidence["by_default"] is True
    assert Provider.objects.get(pk=served.providers[0].pk).barred
    assert not Provider.objects.get(pk=served.providers[1].pk).barred
