"""The provider side's reads: a shard is found by the SHA-256 of its file, in either case, and nothing else."""

from __future__ import annotations

import pytest

from config.errors import NotFound
from market.models import LanguageModel, Shard
from worker_web import selectors

pytestmark = pytest.mark.django_db


def make_shard(sha256: str) -> Shard:
    model = LanguageModel.objects.create(name="m", config={"n_layers": 2}, tokenizer_sha256="0" * 64)
    return Shard.objects.create(
        model=model, shard_id="m:f32:0-2", first_layer=0, end_layer=2, sha256=sha256, size_bytes=1, file="shards/x"
    )


def test_a_shard_is_found_by_its_sha256_in_either_case() -> None:
    shard = make_shard("ab" * 32)
    assert selectors.shard_by_sha256(sha256="ab" * 32) == shard
    assert selectors.shard_by_sha256(sha256="AB" * 32) == shard


def test_an_unknown_sha256_is_not_found() -> None:
    make_shard("ab" * 32)
    with pytest.raises(NotFound) as refused:
        selectors.shard_by_sha256(sha256="cd" * 32)
    assert (refused.value.code, refused.value.message) == ("shard_unavailable", f"no shard has SHA-256 {'cd' * 32}")
