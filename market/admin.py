"""Admin for imported models and their shards."""

from __future__ import annotations

from django.contrib import admin

from market.models import LanguageModel, Shard

_SHARD_INLINE_FIELDS = ("shard_id", "first_layer", "end_layer", "has_embedding", "has_head", "size_bytes", "sha256")


class ShardInline(admin.TabularInline[Shard, LanguageModel]):
    """Shards are written by `import_model` only, so they are read-only here."""

    model = Shard
    extra = 0
    can_delete = False
    fields = _SHARD_INLINE_FIELDS
    readonly_fields = _SHARD_INLINE_FIELDS


@admin.register(LanguageModel)
class LanguageModelAdmin(admin.ModelAdmin[LanguageModel]):
    list_display = ["name", "quant", "architecture", "source_sha256", "created_at"]
    list_filter = ["quant", "architecture"]
    search_fields = ["name", "source_sha256"]
    inlines = [ShardInline]


@admin.register(Shard)
class ShardAdmin(admin.ModelAdmin[Shard]):
    list_display = ["shard_id", "model", "first_layer", "end_layer", "has_embedding", "has_head", "size_bytes"]
    list_filter = ["model", "has_embedding", "has_head"]
    search_fields = ["shard_id", "sha256"]
