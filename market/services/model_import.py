"""Writes of the market app. For now: importing a model as content-addressed ONNX shards."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable
from pathlib import Path

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from config.errors import Conflict, InvalidInput
from inference.config import QUANTS, ShardSpec, parse_plan
from inference.errors import BadShardPlan
from inference.gguf_model import GGUFModel, file_sha256, smollm2_path
from inference.shard_builder import build_shard
from inference.tokenizer import ChatTokenizer
from market.models import LanguageModel, Shard

# Names a user may give instead of a path, and the GGUF each one stands for.
MODEL_ALIASES: dict[str, Callable[[], Path]] = {"smollm2-135m": smollm2_path}


@dataclasses.dataclass
class ImportReport:
    """What an import did: the model row and which shards it built or found already registered."""

    model: LanguageModel
    created: list[str]
    existing: list[str]


def resolve_source(source: str) -> tuple[str, Path]:
    """An alias or a path to a GGUF file -> (model name, path)."""
    if source in MODEL_ALIASES:
        return source, MODEL_ALIASES[source]()
    path = Path(source)
    if not path.is_file():
        known = ", ".join(sorted(MODEL_ALIASES))
        raise InvalidInput(f"{source!r} is neither a GGUF file nor a known model ({known})", code="unknown_model")
    return re.sub(r"[^a-z0-9-]+", "-", path.stem.lower()).strip("-"), path


def model_import(
    *,
    source: str,
    plan: str,
    quant: str = "f32",
    name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Build the shards of `plan` from a GGUF, store them by SHA-256 and register them; idempotent.

    `progress(done, total)` counts the layers of the plan as they are built (or found already built).
    """
    if quant not in QUANTS:
        raise InvalidInput(f"unknown quantisation {quant!r}; expected one of {', '.join(QUANTS)}")
    default_name, path = resolve_source(source)
    name = name or default_name
    gguf = GGUFModel(path)
    try:
        ranges = parse_plan(plan, n_layers=gguf.config.n_layers)
    except BadShardPlan as error:
        raise InvalidInput(str(error), code=error.code) from error
    model = _model_get_or_create(name=name, quant=quant, gguf=gguf)
    report = ImportReport(model=model, created=[], existing=[])
    total = sum(end - first for first, end in ranges)
    done = 0

    def layer_done(_: int) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    for first, end in ranges:
        spec = ShardSpec(name, quant, first, end, gguf.config.n_layers)
        shard = Shard.objects.filter(shard_id=spec.shard_id).first()
        if shard is not None and default_storage.exists(str(shard.file.name)):
            report.existing.append(spec.shard_id)
            for layer in range(first, end):
                layer_done(layer)
            continue
        data = build_shard(gguf, spec, on_layer=layer_done).SerializeToString()
        _shard_register(model=model, spec=spec, data=data)
        report.created.append(spec.shard_id)
    return report


def _store(folder: str, data: bytes, suffix: str) -> tuple[str, str]:
    """Save bytes under their SHA-256; the same content is stored once."""
    sha256 = hashlib.sha256(data).hexdigest()
    name = f"{folder}/{sha256}{suffix}"
    if not default_storage.exists(name):
        saved = default_storage.save(name, ContentFile(data))
        assert saved == name, f"storage renamed {name} to {saved}"
    return name, sha256


def _model_get_or_create(*, name: str, quant: str, gguf: GGUFModel) -> LanguageModel:
    source_sha256 = file_sha256(gguf.path)
    existing = LanguageModel.objects.filter(name=name, quant=quant).first()
    if existing is not None:
        if existing.source_sha256 != source_sha256:
            raise Conflict(
                f"model {name} ({quant}) was imported from another file (SHA-256 {existing.source_sha256[:12]}…); "
                "pass --name to import this one under a different name",
                code="model_conflict",
            )
        if existing.source_path != str(gguf.path):
            LanguageModel.objects.filter(pk=existing.pk).update(source_path=str(gguf.path))
            existing.source_path = str(gguf.path)
        return existing
    tokenizer_name, tokenizer_sha256 = _store("tokenizers", ChatTokenizer.from_gguf(gguf).to_json().encode(), ".json")
    with transaction.atomic():
        model, _ = LanguageModel.objects.get_or_create(
            name=name,
            quant=quant,
            defaults={
                "architecture": "llama",
                "source_sha256": source_sha256,
                "config": gguf.config.to_dict(),
                "tokenizer_file": tokenizer_name,
                "tokenizer_sha256": tokenizer_sha256,
                "source_path": str(gguf.path),
            },
        )
    return model


def _shard_register(*, model: LanguageModel, spec: ShardSpec, data: bytes) -> Shard:
    file_name, sha256 = _store("shards", data, ".onnx")
    with transaction.atomic():
        shard, _ = Shard.objects.update_or_create(
            shard_id=spec.shard_id,
            defaults={
                "model": model,
                "first_layer": spec.first_layer,
                "end_layer": spec.end_layer,
                "has_embedding": spec.has_embedding,
                "has_head": spec.has_head,
                "sha256": sha256,
                "size_bytes": len(data),
                "file": file_name,
            },
        )
    return shard
