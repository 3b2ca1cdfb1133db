"""Transcripts and commitments are kept exactly as long as someone may still need them: the window after the job,
and any dispute still open; then they go (verification.services.transcripts.transcripts_expire)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from verification.models import Commitment, Transcript
from verification.services import disputes, transcripts

if TYPE_CHECKING:
    from tests.verification.conftest import Serve

pytestmark = pytest.mark.django_db


def test_transcripts_and_commitments_outlive_the_window_only_while_a_dispute_is_open(
    serve: Serve, alice: User, settings: Any
) -> None:
    checked, quiet = serve(alice), serve(alice)
    disputes.audit_open(job_id=checked.job.pk)  # open: its job's records must stay
    later = timezone.now() + timedelta(seconds=settings.CHALLENGE_WINDOW_SECONDS + 1)

    assert transcripts.transcripts_expire(now=timezone.now()) == 0, "inside the window nothing goes"
    assert Commitment.objects.filter(session__in=quiet.sessions).count() > 0

    assert transcripts.transcripts_expire(now=later) == 1
    assert list(Transcript.objects.values_list("job_id", flat=True)) == [checked.job.pk]
    assert not Commitment.objects.filter(session__in=quiet.sessions).exists()
    kept = Commitment.objects.filter(session__in=checked.sessions)
    assert kept.count() == len(checked.sessions) * len(checked.states[0]), "every hop's roots of the open dispute"
