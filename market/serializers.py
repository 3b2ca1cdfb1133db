"""Shapes of the market API: what a bid (a job request) may hold, how jobs, models, providers, balances and auction
rounds read back."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from rest_framework import serializers

from ledger.models import PendingRelease
from ledger.services import MAX_AMOUNT
from market import selectors
from market.models import AuctionRound, Job, LanguageModel, Provider


class MessageSerializer(serializers.Serializer):  # type: ignore[misc]  # DRF ships no type hints
    role = serializers.ChoiceField(choices=["system", "user", "assistant"])
    content = serializers.CharField(allow_blank=False, trim_whitespace=False, max_length=100_000)


class JobCreateSerializer(serializers.Serializer):  # type: ignore[misc]  # DRF ships no type hints
    """A chat (`messages`) or a plain `prompt` (one user message), for a model by name (and quantisation)."""

    model = serializers.CharField(max_length=100, help_text="Model name, e.g. smollm2-135m (see /api/models/).")
    quant = serializers.ChoiceField(choices=["f32", "q4"], required=False, help_text="Default: newest import.")
    messages = MessageSerializer(many=True, required=False, allow_empty=False, max_length=1_000)
    prompt = serializers.CharField(required=False, allow_blank=False, max_length=100_000, trim_whitespace=False)
    max_new_tokens = serializers.IntegerField(min_value=1, max_value=Job.MAX_NEW_TOKENS, default=64)
    temperature = serializers.DecimalField(max_digits=4, decimal_places=2, min_value=0, max_value=2, default=0)
    top_p = serializers.DecimalField(max_digits=3, decimal_places=2, min_value=Decimal("0.01"), max_value=1, default=1)
    seed = serializers.IntegerField(min_value=0, max_value=2**63 - 1, required=False, allow_null=True, default=None)
    max_price = serializers.IntegerField(
        min_value=1,
        max_value=MAX_AMOUNT,
        required=False,
        allow_null=True,
        default=None,
        help_text="The most you pay for the whole job, in base units, held in escrow until it settles. "
        "Default: DEFAULT_BID_PER_LAYER_TOKEN for every layer-token of the job run to max_new_tokens.",
    )
    expires_in_seconds = serializers.IntegerField(
        min_value=1,
        required=False,
        allow_null=True,
        default=None,
        help_text="An open bid that no auction round placed by then expires and is refunded. Default: BID_TTL_SECONDS.",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("messages" in attrs) == ("prompt" in attrs):
            raise serializers.ValidationError("give either messages or prompt, not both and not neither")
        if "prompt" in attrs:
            attrs["messages"] = [{"role": "user", "content": attrs.pop("prompt")}]
        return attrs


class ModelSerializer(serializers.ModelSerializer):  # type: ignore[misc]  # DRF ships no type hints
    layers = serializers.SerializerMethodField()
    shards = serializers.SerializerMethodField()

    class Meta:
        model = LanguageModel
        fields = ["id", "name", "quant", "layers", "shards", "source_sha256", "created_at"]

    def get_layers(self, model: LanguageModel) -> int:
        return int(model.config["n_layers"])

    def get_shards(self, model: LanguageModel) -> list[dict[str, Any]]:
        return [
            {"id": s.shard_id, "layers": f"{s.first_layer}-{s.end_layer}", "sha256": s.sha256, "bytes": s.size_bytes}
            for s in model.shards.all()
        ]


class JobSerializer(serializers.ModelSerializer):  # type: ignore[misc]  # DRF ships no type hints
    """A job (a bid while it is queued) as its buyer reads it; `cost` is filled in when it settles."""

    model = serializers.CharField(source="model.name")
    quant = serializers.CharField(source="model.quant")
    stream = serializers.SerializerMethodField(help_text="WebSocket path that streams the tokens.")
    pipeline = serializers.SerializerMethodField(
        help_text="Every shard placement in order: hop, shard, provider, backend, steps served, how it ended."
    )

    class Meta:
        model = Job
        fields = [
            "id",
            "state",
            "model",
            "quant",
            "messages",
            "max_new_tokens",
            "temperature",
            "top_p",
            "seed",
            "prompt_tokens",
            "tokens",
            "text",
            "finish_reason",
            "error_code",
            "error",
            "pipeline",
            "timings",
            "max_price",
            "expires_at",
            "priority",
            "auction_round",
            "cost",
            "settled_at",
            "created_at",
            "started_at",
            "finished_at",
            "stream",
        ]
        read_only_fields = fields

    def get_stream(self, job: Job) -> str:
        return f"/ws/jobs/{job.pk}/"

    def get_pipeline(self, job: Job) -> list[dict[str, Any]]:
        # The channel a provider's slot was claimed on is the market's internal address, not the buyer's business.
        return [{k: v for k, v in entry.items() if k != "channel"} for entry in job.pipeline]


class ProviderSerializer(serializers.ModelSerializer):  # type: ignore[misc]  # DRF ships no type hints
    """What the market shows of a provider: capacity, record and the ask the platform sets for it, never its owner."""

    ask = serializers.SerializerMethodField(
        help_text="The ask the auction uses, base units per layer-token (docs/pricing.md); null before the benchmark."
    )
    platform_ask = serializers.SerializerMethodField(
        help_text="The platform's figure from the provider's speed and reliability: the default and the lowest ask."
    )
    observed_spread = serializers.SerializerMethodField(
        help_text="How the latest jobs' observed speeds spread: {jobs, low, high} (ns per layer-token: the 10th and "
        "90th percentile of the jobs' medians), null before the first."
    )

    class Meta:
        model = Provider
        fields = [
            "id",
            "name",
            "kind",
            "backend",
            "state",
            "slots",
            "busy_slots",
            "memory_bytes",
            "ns_per_layer_token",
            "claimed_ns_per_layer_token",
            "observed_ns_per_layer_token",
            "observed_steps",
            "observed_spread",
            "speed_flagged",
            "reliability_permille",
            "steps_served",
            "failures",
            "last_seen",
            "posted_ask",
            "platform_ask",
            "ask",
        ]
        read_only_fields = fields

    def get_ask(self, provider: Provider) -> int | None:
        return None if provider.ns_per_layer_token is None else selectors.provider_ask(provider)

    def get_platform_ask(self, provider: Provider) -> int | None:
        return None if provider.ns_per_layer_token is None else selectors.platform_floor(provider)

    def get_observed_spread(self, provider: Provider) -> dict[str, int] | None:
        return selectors.observed_spread(provider)


class BalancesSerializer(serializers.Serializer):  # type: ignore[misc]  # DRF ships no type hints
    """A user's balances in base units: as a buyer (available, escrow) and as a provider (pending, earnings)."""

    available = serializers.IntegerField(help_text="Spendable: grants and refunds.")
    escrow = serializers.IntegerField(help_text="Held for your open and running jobs.")
    pending = serializers.IntegerField(help_text="Earned by providing, inside the challenge window.")
    earnings = serializers.IntegerField(help_text="Earned by providing and released; bids draw on it after available.")
    stake = serializers.IntegerField()


class PendingReleaseSerializer(serializers.ModelSerializer):  # type: ignore[misc]  # DRF ships no type hints
    job = serializers.CharField(source="job_ref")
    state = serializers.SerializerMethodField()

    class Meta:
        model = PendingRelease
        fields = ["job", "amount", "release_after", "released_at", "on_hold", "state"]
        read_only_fields = fields

    def get_state(self, row: PendingRelease) -> str:
        return "released" if row.released_at else ("held" if row.on_hold else "pending")


class AuctionRoundSerializer(serializers.ModelSerializer):  # type: ignore[misc]  # DRF ships no type hints
    class Meta:
        model = AuctionRound
        fields = [
            "id",
            "created_at",
            "requested",
            "solver",
            "status",
            "wall_time_s",
            "welfare",
            "objective",
            "best_bound",
            "optimality_gap",
            "n_jobs",
            "n_providers",
            "n_winners",
            "n_losers",
            "n_placed",
            "n_expired",
            "buyer_payments",
            "fees",
            "prices",
        ]
        read_only_fields = fields
