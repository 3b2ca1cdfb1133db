"""Loading a model's stored files: shards checked against their SHA-256, the raw bytes for download, the tokenizer."""

from __future__ import annotations

import hashlib

import pytest
from django.core.files.storage import default_storage

from inference.errors import ShardIntegrityError
from market import model_files
from market.models import LanguageModel

pytestmark = pytest.mark.django_db


def test_a_shard_file_opens_to_the_bytes_its_sha256_names(model: LanguageModel) -> None:
    for shard in model.shards.all():
        with model_files.shard_file_open(shard) as handle:
            data = handle.read()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (shard.sha256, shard.size_bytes)


def test_a_shard_whose_stored_bytes_changed_is_refused(model: LanguageModel) -> None:
    shard = model.shards.first()
    assert shard is not None
    model_files.shard_runtime(shard)  # the stored file as imported loads
    path = default_storage.path(str(shard.file.name))
    with open(path, "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(ShardIntegrityError, match="will not be loaded"):
        model_files.shard_runtime(shard)


def test_the_local_chain_runs_the_shards_in_order(model: LanguageModel) -> None:
    chain = model_files.local_chain(list(model.shards.order_by("first_layer")))
    assert [(r.spec.first_layer, r.spec.end_layer) for r in chain.shards] == [(0, 2), (2, 4)]


def test_the_tokenizer_is_parsed_once_per_file_content(model: LanguageModel) -> None:
    tokenizer = model_files.model_tokenizer(model)
    assert tokenizer.encode_chat([{"role": "user", "content": "hi"}])
    default_storage.delete(str(model.tokenizer_file.name))  # a second read would fail: the cached one is served
    assert model_files.model_tokenizer(model) is tokenizer
