"""Database constraints on imported models and shards."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from market.models import LanguageModel, Shard


def make_model(name: str = "tiny-llama", quant: str = "f32") -> LanguageModel:
    return LanguageModel.objects.create(
        name=name, architecture="llama", source_sha256="0" * 64, config={"n_layers": 4}, quant=quant
    )


def make_shard(model: LanguageModel, first: int, end: int) -> Shard:
    return Shard.objects.create(
        model=model,
        shard_id=f"{model.name}:{model.quant}:{first}-{end}",
        first_layer=first,
        end_layer=end,
        has_embedding=first == 0,
        has_head=end == 4,
        sha256="a" * 64,
        size_bytes=1024,
        file="shards/x.onnx",
    )


@pytest.mark.parametrize(("first", "end"), [(2, 2), (3, 1)])
def test_shard_rejects_empty_or_reversed_layer_range(db: None, first: int, end: int) -> None:
    model = make_model()
    with pytest.raises(IntegrityError), transaction.atomic():
        make_shard(model, first, end)
    assert not Shard.objects.exists()


def test_shard_accepts_a_forward_layer_range(db: None) -> None:
    shard = make_shard(make_model(), 0, 2)
    assert shard.n_layers == 2
    assert list(shard.model.shards.all()) == [shard]


def test_same_layer_range_twice_for_one_model_is_rejected(db: None) -> None:
    model = make_model()
    make_shard(model, 0, 2)
    with pytest.raises(IntegrityError), transaction.atomic():
        Shard.objects.create(
            model=model, shard_id="other-id", first_layer=0, end_layer=2, sha256="b" * 64, size_bytes=1, file="x"
        )


def test_model_name_is_unique_per_quant(db: None) -> None:
    make_model(quant="f32")
    make_model(quant="q4")  # the same GGUF in another weight format is a separate row
    with pytest.raises(IntegrityError), transaction.atomic():
        make_model(quant="f32")
    assert LanguageModel.objects.count() == 2
