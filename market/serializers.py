"""Shapes of the buyer API: what a job request may hold, and how jobs and models read back."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from rest_framework import serializers

from market.models import Job, LanguageModel, Provider
from market.services.jobs import MAX_NEW_TOKENS


class MessageSerializer(serializers.Serializer):  # type: ignore[misc]  # DRF ships no type hints
    role = serializers.ChoiceField(choices=["system", "user", "assistant"])
    content = serializers.CharField(allow_blank=False, trim_whitespace=False, max_length=100_000)


class JobCreateSerializer(serializers.Serializer):  # type: ignore[misc]  # DRF ships no type hints
    """A chat (`messages`) or a plain `prompt` (one user message), for a model by name (and quantisation)."""

    model = serializers.CharField(max_length=100, help_text="Model name, e.g. smollm2-135m (see /api/models/).")
    quant = serializers.ChoiceField(choices=["f32", "q4"], required=False, help_text="Default: newest import.")
    messages = MessageSerializer(many=True, required=False, allow_empty=False)
    prompt = serializers.CharField(required=False, allow_blank=False, max_length=100_000, trim_whitespace=False)
    max_new_tokens = serializers.IntegerField(min_value=1, max_value=MAX_NEW_TOKENS, default=64)
    temperature = serializers.DecimalField(max_digits=4, decimal_places=2, min_value=0, max_value=2, default=0)
    top_p = serializers.DecimalField(max_digits=3, decimal_places=2, min_value=Decimal("0.01"), max_value=1, default=1)
    seed = serializers.IntegerField(min_value=0, max_value=2**63 - 1, required=False, allow_null=True, default=None)

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
    """A job as its buyer reads it. Price and escrow fields join when the market prices jobs."""

    model = serializers.CharField(source="model.name")
    quant = serializers.CharField(source="model.quant")
    stream = serializers.SerializerMethodField(help_text="WebSocket path that streams the tokens.")

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
            "created_at",
            "started_at",
            "finished_at",
            "stream",
        ]
        read_only_fields = fields

    def get_stream(self, job: Job) -> str:
        return f"/ws/jobs/{job.pk}/"


class ProviderSerializer(serializers.ModelSerializer):  # type: ignore[misc]  # DRF ships no type hints
    """What the market shows of a provider: capacity and record, never its owner."""

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
            "reliability_permille",
            "steps_served",
            "failures",
            "last_seen",
        ]
        read_only_fields = fields
