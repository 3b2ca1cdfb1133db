"""Shard downloads: by SHA-256, to signed-in users only, with an ETag so that a cached copy costs nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from inference.tiny import write_tiny_gguf
from market import services
from market.models import Shard

pytestmark = pytest.mark.django_db


@pytest.fixture
def shard(tmp_path: Path, settings: Any) -> Shard:
    """The first shard of the tiny model, stored under a temporary MEDIA_ROOT."""
    settings.MEDIA_ROOT = tmp_path / "media"
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    model = services.model_import(source=str(gguf), plan="0-2,2-4", name="tiny").model
    return model.shards.get(first_layer=0)


def signed_in() -> APIClient:
    client = APIClient()
    client.force_authenticate(User.objects.get_or_create(username="alice")[0])
    return client


def test_a_shard_downloads_with_its_etag_and_never_expires(shard: Shard) -> None:
    response = signed_in().get(f"/shards/{shard.sha256}/")
    data = b"".join(response.streaming_content)
    assert response.status_code == 200
    assert (hashlib.sha256(data).hexdigest(), len(data)) == (shard.sha256, shard.size_bytes)
    assert response["Content-Type"] == "application/onnx"
    assert response["Content-Length"] == str(shard.size_bytes)
    assert (response["ETag"], response["X-Shard-SHA256"]) == (f'"{shard.sha256}"', shard.sha256)
    assert response["Cache-Control"] == "private, max-age=31536000, immutable"


def test_a_cached_shard_is_not_sent_again(shard: Shard) -> None:
    response = signed_in().get(f"/shards/{shard.sha256}/", HTTP_IF_NONE_MATCH=f'"other", "{shard.sha256}"')
    assert (response.status_code, response.content) == (304, b"")
    assert (response["ETag"], response["X-Shard-SHA256"]) == (f'"{shard.sha256}"', shard.sha256)
    stale = signed_in().get(f"/shards/{shard.sha256}/", HTTP_IF_NONE_MATCH='"other"')
    assert stale.status_code == 200


def test_the_sha256_is_matched_in_either_case(shard: Shard) -> None:
    response = signed_in().get(f"/shards/{shard.sha256.upper()}/")
    assert (response.status_code, response["X-Shard-SHA256"]) == (200, shard.sha256)


def test_an_unknown_sha256_is_404_shard_unavailable(shard: Shard) -> None:
    response = signed_in().get(f"/shards/{'0' * 64}/")
    assert response.status_code == 404
    assert response.json() == {"code": "shard_unavailable", "message": f"no shard has SHA-256 {'0' * 64}"}


def test_an_anonymous_download_is_refused(shard: Shard) -> None:
    response = APIClient().get(f"/shards/{shard.sha256}/")
    assert (response.status_code, response.json()["code"]) == (401, "not_authenticated")
