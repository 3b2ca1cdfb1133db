"""A shard file is loaded only when its bytes hash to the SHA-256 it was registered under."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from inference.errors import ShardIntegrityError
from inference.gguf_model import GGUFModel
from inference.runtime import ShardRuntime, read_verified


@pytest.fixture
def shard_file(
    tmp_path: Path, tiny_model: GGUFModel, tiny_shard_bytes: Callable[[GGUFModel, str, int, int], bytes]
) -> tuple[Path, str]:
    """A valid shard (layers 1-3 of the tiny model) on disk, and its SHA-256."""
    data = tiny_shard_bytes(tiny_model, "f32", 1, 3)
    path = tmp_path / "shard.onnx"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_correct_hash_loads_the_shard(shard_file: tuple[Path, str]) -> None:
    path, sha = shard_file
    assert read_verified(path, sha) == path.read_bytes()
    runtime = ShardRuntime(path, sha256=sha)
    assert runtime.spec.shard_id == "tiny-4:f32:1-3"


def test_hash_comparison_ignores_hex_case_for_files(shard_file: tuple[Path, str]) -> None:
    path, sha = shard_file
    assert read_verified(path, sha.upper()) == path.read_bytes()


def test_wrong_hash_is_refused_and_not_loaded(shard_file: tuple[Path, str]) -> None:
    path, _ = shard_file
    other = hashlib.sha256(b"some other shard").hexdigest()
    with pytest.raises(ShardIntegrityError, match="will not be loaded") as caught:
        ShardRuntime(path, sha256=other)
    assert caught.value.code == "shard_integrity"
    assert path.name in str(caught.value)
    with pytest.raises(ShardIntegrityError, match="will not be loaded"):
        read_verified(path, other)


def test_one_flipped_byte_in_the_middle_is_caught(shard_file: tuple[Path, str]) -> None:
    path, sha = shard_file
    _flip_middle_byte(path)
    with pytest.raises(ShardIntegrityError, match="corrupt or was tampered with"):
        read_verified(path, sha)
    with pytest.raises(ShardIntegrityError, match="will not be loaded"):
        ShardRuntime(path, sha256=sha)


def test_shard_bytes_with_the_wrong_hash_are_refused(shard_file: tuple[Path, str]) -> None:
    path, sha = shard_file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    with pytest.raises(ShardIntegrityError, match="will not be loaded"):
        ShardRuntime(bytes(data), sha256=sha)
    assert ShardRuntime(path.read_bytes(), sha256=sha).spec.shard_id == "tiny-4:f32:1-3"


def test_without_a_hash_the_file_is_read_unchecked(shard_file: tuple[Path, str]) -> None:
    path, _ = shard_file
    assert read_verified(path, None) == path.read_bytes()


def test_the_expected_hash_may_be_given_in_upper_case(shard_file: tuple[Path, str]) -> None:
    path, sha = shard_file
    assert ShardRuntime(path.read_bytes(), sha256=sha.upper()).spec.shard_id == "tiny-4:f32:1-3"
    assert ShardRuntime(path, sha256=sha.upper()).spec.shard_id == "tiny-4:f32:1-3"
