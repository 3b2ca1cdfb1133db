"""Loading a model's stored files: its ONNX shards (as runtimes, as a local chain, or as a byte stream to send to a
provider) and its tokenizer. None of this reads the database; the rows it is handed name the files and their
SHA-256, and the files themselves live in Django's default storage."""

from __future__ import annotations

from typing import IO

from django.core.files.storage import default_storage

from inference.generate import LocalChain
from inference.runtime import ShardRuntime
from inference.tokenizer import ChatTokenizer
from market.models import LanguageModel, Shard


def shard_runtime(shard: Shard) -> ShardRuntime:
    """Load a stored shard, refusing bytes that do not match its registered SHA-256."""
    return ShardRuntime(default_storage.path(str(shard.file.name)), sha256=shard.sha256)


def local_chain(shards: list[Shard]) -> LocalChain:
    """The shards loaded in this process, run front to back (each checked against its SHA-256)."""
    return LocalChain(shard_runtime(s) for s in shards)


def shard_file_open(shard: Shard) -> IO[bytes]:
    """The stored shard's bytes, opened for reading; the caller closes it (a FileResponse does when it is sent)."""
    handle: IO[bytes] = default_storage.open(str(shard.file.name), "rb")
    return handle


_TOKENIZERS: dict[str, ChatTokenizer] = {}  # by the SHA-256 of the stored file: content never changes under it


def model_tokenizer(model: LanguageModel) -> ChatTokenizer:
    """The model's tokenizer, parsed once per process and file content."""
    if (cached := _TOKENIZERS.get(model.tokenizer_sha256)) is not None:
        return cached
    with default_storage.open(str(model.tokenizer_file.name), "rb") as handle:
        tokenizer = ChatTokenizer.from_json(handle.read().decode())
    _TOKENIZERS[model.tokenizer_sha256] = tokenizer
    return tokenizer
