"""Transcripts: what a finished job's hops were fed and returned, written once by its runner after the job, read by
the referee, deleted when the window and any dispute are over."""

from __future__ import annotations

import io
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from market import model_files
from market.models import Job, Shard
from verification import referee
from verification.models import Commitment, Dispute, Transcript
from verification.referee import HeadAnswer, HopWork

TOP_LOGITS = 16  # a sampled job's head answer is kept as its 16 largest logits


def head_answer(output: np.ndarray) -> HeadAnswer:
    """What the transcript keeps of a head's output: its token (greedy), or its largest logits (sampled)."""
    if output.dtype == np.int64:
        return np.asarray(output, dtype=np.int64).reshape(1, 1)
    logits = np.asarray(output, dtype=np.float32).reshape(-1)
    top = np.argpartition(logits, -TOP_LOGITS)[-TOP_LOGITS:]
    return top.astype(np.int64), logits[top]


def transcript_record(
    *, job_id: int, hops: list[dict[str, Any]], inputs: Sequence[Sequence[np.ndarray]], heads: Sequence[HeadAnswer]
) -> Transcript | None:
    """Keep a job's transcript: every hop's recorded input per step, and the head's answers. Once per job."""
    steps = min([len(heads), *(len(x) for x in inputs)])
    if steps == 0:
        return None
    data = referee.pack(inputs, heads, steps=steps)
    keep_until = timezone.now() + timedelta(seconds=settings.CHALLENGE_WINDOW_SECONDS)
    transcript, _ = Transcript.objects.get_or_create(
        job_id=job_id,
        defaults={"data": data, "hops": hops, "steps": steps, "size_bytes": len(data), "keep_until": keep_until},
    )
    return transcript


def hop_descriptor(hop: int, shard: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "sha256", "first_layer", "end_layer", "has_head", "has_embedding")
    return {"hop": hop, **{k: shard[k] for k in keys if k in shard}}


def hop_works(transcript: Transcript) -> list[HopWork]:
    """The referee's view of a transcript: per hop, its shard's loader, inputs and outputs per step."""
    with np.load(io.BytesIO(bytes(transcript.data))) as saved:
        arrays = {name: saved[name] for name in saved.files}
    steps, hops = transcript.steps, transcript.hops
    works = []
    for position, hop in enumerate(hops):
        inputs = [arrays[f"in_{position}_{s}"] for s in range(steps)]
        if position + 1 < len(hops):
            outputs: list[Any] = [arrays[f"in_{position + 1}_{s}"] for s in range(steps)]
        else:
            outputs = [
                arrays[f"head_{s}"] if f"head_{s}" in arrays else (arrays[f"headidx_{s}"], arrays[f"headval_{s}"])
                for s in range(steps)
            ]
        works.append(HopWork(hop=position, load=_loader(hop["sha256"]), inputs=inputs, outputs=outputs))
    return works


def _loader(sha256: str):  # type: ignore[no-untyped-def]
    def load():  # type: ignore[no-untyped-def]
        shard = Shard.objects.filter(sha256=sha256).first()
        if shard is None:
            raise LookupError(f"the shard with SHA-256 {sha256[:12]}… is no longer stored")
        return model_files.shard_runtime(shard)

    return load


def transcripts_expire(*, now: datetime | None = None) -> int:
    """Delete transcripts past their keep time whose job has no dispute still open, and the commitments no kept
    transcript or open dispute needs (older than the window); returns how many transcripts went."""
    now = now or timezone.now()
    open_jobs = Dispute.objects.exclude(state__in=Dispute.CLOSED).values("job_id")
    with transaction.atomic():
        deleted, _ = Transcript.objects.filter(keep_until__lt=now).exclude(job_id__in=open_jobs).delete()
    needed = {
        str(entry.get("session"))
        for pipeline in Job.objects.filter(transcript__isnull=False).values_list("pipeline", flat=True)
        for entry in pipeline or []
    } | {str(s) for s in Dispute.objects.exclude(state__in=Dispute.CLOSED).values_list("session", flat=True) if s}
    stale = Commitment.objects.filter(created_at__lt=now - timedelta(seconds=settings.CHALLENGE_WINDOW_SECONDS))
    stale.exclude(session__in=[uuid.UUID(s) for s in needed if _is_uuid(s)]).delete()
    return deleted


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def job_transcript(job: Job) -> Transcript | None:
    return Transcript.objects.filter(job=job).first()
