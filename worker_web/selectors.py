"""Reads of the provider side: what a provider (an agent or a browser tab) looks up to fetch its work."""

from __future__ import annotations

from config.errors import NotFound
from market.models import Shard


def shard_by_sha256(*, sha256: str) -> Shard:
    """The shard whose file has this SHA-256 (hex, either case); NotFound when no shard has it."""
    shard = Shard.objects.filter(sha256=sha256.lower()).first()
    if shard is None:
        raise NotFound(f"no shard has SHA-256 {sha256}", code="shard_unavailable")
    return shard
