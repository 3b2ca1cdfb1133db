"""Verification models: transcripts of finished jobs, providers' commitments, disputes (audits and challenges), the
layer states providers reveal, and the verdicts (docs/verification.md tells the whole protocol)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Transcript(models.Model):
    """What a finished job's pipeline was fed and returned: every hop's recorded input per step and the head's
    answers (an npz in `data`), kept until the challenge window and any dispute are over, then deleted."""

    job = models.OneToOneField("market.Job", on_delete=models.CASCADE, related_name="transcript")
    data = models.BinaryField(help_text="npz: in_<hop>_<step> (token ids or float16 hidden states), head_<step>.")
    hops = models.JSONField(help_text="[{hop, shard_id, sha256, first_layer, end_layer, has_head}] in order.")
    steps = models.PositiveIntegerField(help_text="Steps that went through every hop.")
    size_bytes = models.PositiveIntegerField()
    keep_until = models.DateTimeField(db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"transcript of job {self.job_id} ({self.steps} steps, {self.size_bytes} bytes)"


class Commitment(models.Model):
    """A provider's commitment to its shard's per-layer hidden states for one step of one session (a Merkle root,
    inference/commitment.py). Sent with its outputs, before anyone knows which job will be checked."""

    session = models.UUIDField()
    step = models.PositiveIntegerField()
    root = models.CharField(max_length=64)
    provider = models.ForeignKey("market.Provider", on_delete=models.CASCADE, related_name="commitments")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["session", "step"], name="verification_commitment_once")]

    def __str__(self) -> str:
        return f"{self.session} step {self.step}: {self.root[:12]}…"


class Dispute(models.Model):
    """One check of one finished job: a random audit the server drew, or a buyer's challenge with a bond.

    Phase 1 (`state` open): the referee re-runs every hop from the transcript and finds the first (step, hop) whose
    output leaves the tolerance. Phase 2 (`revealing`): that hop's provider reveals layers, bisected between
    `layer_low` and `layer_high`, before `deadline` (a chess clock: silence loses). Then a verdict, applied once.
    """

    class Kind(models.TextChoices):
        AUDIT = "audit", "random audit"
        CHALLENGE = "challenge", "buyer's challenge"

    class State(models.TextChoices):
        OPEN = "open", "re-running the job (phase 1)"
        REVEALING = "revealing", "waiting for the provider's layers (phase 2)"
        FRAUD = "fraud", "fraud proven"
        NO_FRAUD = "no_fraud", "no fraud"

    CLOSED = (State.FRAUD, State.NO_FRAUD)

    job = models.ForeignKey("market.Job", on_delete=models.CASCADE, related_name="disputes")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPEN, db_index=True)
    challenger = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="challenges"
    )
    bond = models.BigIntegerField(default=0, help_text="Base units the challenger put up (0 for an audit).")
    # Where phase 1 found the first output outside the tolerance, and who served it.
    step = models.PositiveIntegerField(null=True, blank=True)
    hop = models.PositiveIntegerField(null=True, blank=True)
    provider = models.ForeignKey(
        "market.Provider", null=True, blank=True, on_delete=models.PROTECT, related_name="disputes"
    )
    session = models.UUIDField(null=True, blank=True)
    # Phase 2: the first layer (index in the shard) whose committed states leave the referee's lies in
    # [layer_low, layer_high]; layer_high = the shard's layer count stands for "its output, after every layer".
    layer_low = models.PositiveIntegerField(null=True, blank=True)
    layer_high = models.PositiveIntegerField(null=True, blank=True)
    layer = models.PositiveIntegerField(
        null=True, blank=True, help_text="The layer (in the model) fraud was proven at."
    )
    request = models.CharField(max_length=64, blank=True, help_text="The reveal asked for now.")
    deadline = models.DateTimeField(null=True, blank=True, help_text="When the provider loses by default.")
    lease_until = models.DateTimeField(null=True, blank=True, help_text="A referee is working on it until then.")
    reason = models.TextField(blank=True, help_text="The verdict in words.")
    evidence = models.JSONField(default=dict, help_text="What the verdict rests on: layer, step, digests, figures.")
    evidence_hash = models.CharField(max_length=66, blank=True)
    referee = models.JSONField(default=dict, help_text="Tolerance, time and layers recomputed.")
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["job"], condition=models.Q(kind="challenge"), name="verification_one_challenge_per_job"
            ),
            models.UniqueConstraint(fields=["job"], condition=models.Q(kind="audit"), name="verification_one_audit"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} of job {self.job_id}: {self.state}"


class Reveal(models.Model):
    """One layer's states over steps first..last that a provider opened for a dispute, checked against its
    commitments (`valid` False: a proof failed or a shape was wrong, which loses the dispute)."""

    dispute = models.ForeignKey(Dispute, on_delete=models.CASCADE, related_name="reveals")
    request = models.CharField(max_length=64, unique=True)
    layer = models.PositiveIntegerField(help_text="Index in the shard.")
    first_step = models.PositiveIntegerField()
    last_step = models.PositiveIntegerField()
    states = models.BinaryField(blank=True, help_text="npz: s<step> float32 [S, H].")
    valid = models.BooleanField(null=True, help_text="None until the answer arrived.")
    sent_to = models.CharField(max_length=200, blank=True, help_text="The provider connection it was last sent to.")
    problem = models.CharField(max_length=300, blank=True)
    asked_at = models.DateTimeField(auto_now_add=True)
    answered_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"reveal {self.request} (layer {self.layer}, steps {self.first_step}-{self.last_step})"
