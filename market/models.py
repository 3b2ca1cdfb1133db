"""Market models: the imported language models and their shards, the providers that serve them, the jobs (bids),
and the auction rounds with the assignments they made."""

from __future__ import annotations

from django.db import models


class LanguageModel(models.Model):
    """An LLM imported from a GGUF file, in one weight format (quant).

    The same GGUF imported as f32 and as q4 gives two rows with the same name: their shards differ in files and
    speed but compute the same function (q4 exactly reproduces the GGUF's Q4_1 weights).
    """

    class Quant(models.TextChoices):
        F32 = "f32", "float32 weights"
        Q4 = "q4", "4-bit weights (MatMulNBits)"

    name = models.SlugField(max_length=100, help_text='Short model name, e.g. "smollm2-135m".')
    architecture = models.CharField(max_length=32, default="llama")
    source_sha256 = models.CharField(max_length=64, help_text="SHA-256 (hex) of the GGUF file it was imported from.")
    config = models.JSONField(help_text="Model hyperparameters (layers, hidden size, heads, vocab, RoPE theta, ...).")
    quant = models.CharField(max_length=8, choices=Quant.choices, default=Quant.F32)
    tokenizer_file = models.FileField(
        upload_to="tokenizers/", help_text="Tokenizer, chat template and stop tokens as JSON (content-addressed)."
    )
    tokenizer_sha256 = models.CharField(max_length=64)
    source_path = models.CharField(
        max_length=500, blank=True, help_text="The GGUF it was imported from: the referee builds single layers from it."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "quant"]
        constraints = [models.UniqueConstraint(fields=["name", "quant"], name="market_languagemodel_name_quant_uniq")]

    def __str__(self) -> str:
        return f"{self.name} ({self.quant})"


class Shard(models.Model):
    """A contiguous range of decoder layers [first_layer, end_layer) of a model, as one ONNX file.

    The first shard also holds the token embedding and the last the final norm and LM head. The file is stored
    content-addressed: `sha256` is the hash of its bytes, which providers check after downloading.
    """

    model = models.ForeignKey(LanguageModel, on_delete=models.CASCADE, related_name="shards")
    shard_id = models.CharField(max_length=160, unique=True, help_text="<model>:<quant>:<first_layer>-<end_layer>")
    first_layer = models.PositiveIntegerField()
    end_layer = models.PositiveIntegerField(help_text="Exclusive.")
    has_embedding = models.BooleanField(default=False)
    has_head = models.BooleanField(default=False)
    sha256 = models.CharField(max_length=64, db_index=True)
    size_bytes = models.BigIntegerField()
    file = models.FileField(upload_to="shards/")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model", "first_layer"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(end_layer__gt=models.F("first_layer")),
                name="market_shard_end_after_first",
            ),
            models.UniqueConstraint(fields=["model", "first_layer", "end_layer"], name="market_shard_layer_range_uniq"),
        ]

    def __str__(self) -> str:
        return self.shard_id

    @property
    def n_layers(self) -> int:
        return self.end_layer - self.first_layer


class Provider(models.Model):
    """One connected (or once connected) provider agent: a browser tab or a headless process.

    A user may run several agents; each is its own row, created when it first says hello. Capacity is what the
    agent last reported; the benchmark is what the server measured and checked on its current connection (each
    connection answers its own challenge); `channel_name` reaches its WebSocket consumer through the channel layer
    while it is online.
    """

    class State(models.TextChoices):
        ONLINE = "online", "online"
        OFFLINE = "offline", "offline"

    user = models.ForeignKey("auth.User", on_delete=models.CASCADE, related_name="providers")
    name = models.CharField(max_length=100, help_text="What the agent calls itself (host name, browser).")
    kind = models.CharField(max_length=16, default="headless", help_text="headless or browser")
    backend = models.CharField(max_length=32, default="cpu", help_text="cpu, wasm or webgpu")
    slots = models.PositiveIntegerField(default=1, help_text="Shard sessions it serves at once.")
    busy_slots = models.PositiveIntegerField(
        default=0, help_text="Slots held by running jobs; claimed and released by conditional UPDATEs."
    )
    memory_bytes = models.BigIntegerField(default=0)
    ns_per_layer_token = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Benchmark: nanoseconds per layer per token on the real shard workload, as the server timed its "
        "challenge on this connection (null: not benchmarked, never placed).",
    )
    claimed_ns_per_layer_token = models.BigIntegerField(
        null=True, blank=True, help_text="What the provider itself timed on its last benchmark: shown, never priced."
    )
    posted_ask = models.PositiveIntegerField(
        null=True, blank=True, help_text="The provider's own ask per layer-token; null: the platform's figure."
    )
    observed_ns_per_layer_token = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="What the market measured on real work: ns per layer per token on decode steps.",
    )
    observed_steps = models.PositiveIntegerField(default=0, help_text="Decode steps behind the observed speed.")
    observed_jobs = models.JSONField(
        default=list,
        blank=True,
        help_text="The latest jobs' observations [[ns per layer-token (the job's median step), decode steps], ...], "
        "newest last, at most SPEED_HISTORY_JOBS: the observed speed is their median weighted by steps.",
    )
    speed_flagged = models.BooleanField(
        default=False, help_text="Observed far slower than its benchmark claimed (SPEED_FLAG_RATIO)."
    )
    barred = models.BooleanField(default=False, help_text="Proven to cheat: never placed again.")
    audits_passed = models.PositiveIntegerField(default=0, help_text="Checks of its work that found no fraud.")
    audits_failed = models.PositiveIntegerField(default=0, help_text="Checks that proved fraud.")
    clean_streak = models.PositiveIntegerField(default=0, help_text="Checks passed since the last failure.")
    reliability_permille = models.PositiveIntegerField(
        default=1000, help_text="0..1000; falls when the provider drops a step, recovers with clean work."
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.OFFLINE, db_index=True)
    channel_name = models.CharField(max_length=200, blank=True)
    steps_served = models.BigIntegerField(default=0)
    failures = models.PositiveIntegerField(default=0)
    last_seen = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"provider {self.pk} ({self.name}, {self.state})"

    @property
    def speed_ns_per_layer_token(self) -> int | None:
        """The speed the market prices and places by: what it observed on real work once it has SPEED_MIN_SAMPLES
        decode steps, the provider's own benchmark before that (None: not benchmarked yet)."""
        from django.conf import settings  # read at call time, never at import

        if self.observed_ns_per_layer_token is not None and self.observed_steps >= settings.SPEED_MIN_SAMPLES:
            return self.observed_ns_per_layer_token
        return self.ns_per_layer_token


class Job(models.Model):
    """A buyer's request for generated text, driven through a pipeline of providers by the orchestrator."""

    class State(models.TextChoices):
        QUEUED = "queued", "queued: an open bid in the book"
        ALLOCATED = "allocated", "allocated: won an auction round, its runner is starting"
        RUNNING = "running", "running"
        DONE = "done", "done"
        FAILED = "failed", "failed"
        CANCELLED = "cancelled", "cancelled"
        EXPIRED = "expired", "expired: the bid found no providers before its expiry"

    FINAL_STATES = (State.DONE, State.FAILED, State.CANCELLED, State.EXPIRED)
    MAX_NEW_TOKENS = 1024  # the most tokens one job may ask for

    buyer = models.ForeignKey("auth.User", on_delete=models.CASCADE, related_name="jobs")
    model = models.ForeignKey(LanguageModel, on_delete=models.PROTECT, related_name="jobs")
    messages = models.JSONField(help_text="Chat messages [{role, content}]; a plain prompt is one user message.")
    max_new_tokens = models.PositiveIntegerField(default=64)
    temperature = models.DecimalField(max_digits=4, decimal_places=2, default=0, help_text="0 = greedy")
    top_p = models.DecimalField(max_digits=3, decimal_places=2, default=1)
    seed = models.BigIntegerField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED, db_index=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    tokens = models.JSONField(default=list, help_text="Generated token ids, in order.")
    text = models.TextField(blank=True)
    finish_reason = models.CharField(max_length=16, blank=True, help_text="stop, length, or empty")
    error_code = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    pipeline = models.JSONField(
        default=list, help_text="Every shard placement in order: [{shard, provider, from_step, until_step}]."
    )
    timings = models.JSONField(default=dict, help_text="Seconds: queued, prefill, decode; tokens per second.")
    max_price = models.BigIntegerField(
        default=0, help_text="The bid: the most the buyer pays for the whole job, in base units, held in escrow."
    )
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="An open bid that no round has placed by then expires and is refunded."
    )
    priority = models.PositiveIntegerField(
        default=0, help_text="Raised each round the bid loses and when its providers fail before it starts."
    )
    auction_round = models.ForeignKey(
        "AuctionRound",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="jobs",
        help_text="The round that placed the job (its latest, if it came back to the book).",
    )
    cost = models.JSONField(
        default=dict, help_text="The settlement: what each placement was paid, the fee, the refund (base units)."
    )
    settled_at = models.DateTimeField(null=True, blank=True, help_text="When its escrow was settled or refunded.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    runner_seen_at = models.DateTimeField(
        null=True, blank=True, help_text="The runner's lease: renewed while it runs; a stale one means it died."
    )
    runner_epoch = models.PositiveIntegerField(
        default=0, help_text="Which runner holds the lease: raised each time another takes the job over (a resume)."
    )
    runner_lost_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When a takeover found its runner lost: its server died no later than this, so a provider heard "
        "from since is connected to a live one.",
    )

    class Meta:
        ordering = ["-pk"]
        indexes = [
            models.Index(
                fields=["priority", "created_at"], condition=models.Q(state="queued"), name="market_job_book_idx"
            ),
            # The dashboard's tokens served: the jobs that finished lately (market/overview.py), at every settlement.
            models.Index(fields=["finished_at"], name="market_job_finished_idx"),
        ]

    def __str__(self) -> str:
        return f"job {self.pk} ({self.state})"


class AuctionRound(models.Model):
    """One clearing of the book: what the solver was given, what it found, and at what prices."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    requested = models.CharField(max_length=16, help_text="auto, cpsat or greedy")
    solver = models.CharField(max_length=16, help_text="The solver whose allocation was used: cpsat or greedy.")
    status = models.CharField(max_length=16, help_text="optimal, feasible (CP-SAT hit its limit) or heuristic")
    wall_time_s = models.FloatField()
    welfare = models.BigIntegerField(help_text="Σ over winners of (bid − Σ ask × work), base units.")
    objective = models.BigIntegerField(help_text="Welfare plus the winners' priority bonuses.")
    best_bound = models.BigIntegerField(null=True, blank=True)
    optimality_gap = models.FloatField(null=True, blank=True, help_text="Known only when CP-SAT ran.")
    n_jobs = models.PositiveIntegerField(help_text="Bids in the book.")
    n_providers = models.PositiveIntegerField(help_text="Providers with free capacity.")
    n_winners = models.PositiveIntegerField()
    n_losers = models.PositiveIntegerField()
    n_placed = models.PositiveIntegerField(help_text="Winners whose slots were still free when they were claimed.")
    n_expired = models.PositiveIntegerField(default=0, help_text="Bids that expired at the start of the round.")
    buyer_payments = models.BigIntegerField(help_text="What the winners pay if they run to their token limit.")
    fees = models.BigIntegerField()
    prices = models.JSONField(default=list, help_text="Every trade: job, shard, provider, work, ask, unit price.")

    class Meta:
        ordering = ["-pk"]

    def __str__(self) -> str:
        return f"round {self.pk}: {self.n_winners}/{self.n_jobs} jobs by {self.solver}"


class Assignment(models.Model):
    """One hop of a winning job on the provider the auction chose, at the price it cleared. The provider's slot
    is claimed when the row is written and released by the job's runner."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="assignments")
    auction_round = models.ForeignKey(AuctionRound, on_delete=models.CASCADE, related_name="assignments")
    hop = models.PositiveIntegerField()
    shard = models.ForeignKey(Shard, on_delete=models.PROTECT, related_name="+")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="assignments")
    channel_name = models.CharField(max_length=200, help_text="The provider's connection whose slot was claimed.")
    work = models.BigIntegerField(help_text="Layer-tokens if the job runs to its token limit.")
    ask = models.BigIntegerField(help_text="The provider's ask per layer-token in that round.")
    unit_price = models.BigIntegerField(help_text="Cleared price per layer-token, in [ask, the job's bid per unit].")

    class Meta:
        ordering = ["job", "auction_round", "hop"]
        constraints = [
            models.UniqueConstraint(fields=["job", "auction_round", "hop"], name="market_assignment_hop_once"),
            models.CheckConstraint(
                condition=models.Q(unit_price__gte=models.F("ask")), name="market_assignment_price_ge_ask"
            ),
        ]

    def __str__(self) -> str:
        return f"job {self.job_id} hop {self.hop} on provider {self.provider_id} at {self.unit_price}"


class ApiToken(models.Model):
    """A named API token a user made on the account page, besides the account's default token (DRF's authtoken).

    Only the SHA-256 of the key is stored (a leak of the database reveals no key): the key is shown once, when it
    is made, and looked up by its hash. A revoked token keeps its row (revoked_at set) so the page can list it.
    `last_used_at` is updated at most once a minute (market/auth.py), not on every request.
    """

    user = models.ForeignKey("auth.User", on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    key_sha256 = models.CharField(max_length=64, unique=True, help_text="SHA-256 (hex) of the key; never the key.")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["pk"]
        indexes = [models.Index(fields=["user", "revoked_at"], name="market_apitoken_user_live_idx")]

    def __str__(self) -> str:
        return f"API token {self.pk} ({self.name}) of user {self.user_id}"
