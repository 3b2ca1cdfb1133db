"""import_model: content-addressed shards registered once, clear errors, and `generate` over them."""

from __future__ import annotations

import hashlib
from io import StringIO
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.core.management.base import CommandError

from inference.errors import ShardIntegrityError
from inference.tiny import write_tiny_gguf
from market import model_files
from market.models import LanguageModel, Shard

pytestmark = pytest.mark.django_db


@pytest.fixture
def media(tmp_path: Path, settings: object) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"  # type: ignore[attr-defined]
    return tmp_path / "media"


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_import_model_stores_shards_by_sha256(media: Path, tiny_gguf: Path) -> None:
    output = run("import_model", str(tiny_gguf), "--plan", "0-1,1-3,3-4", "--name", "tiny")
    shards = list(Shard.objects.order_by("first_layer"))
    assert [(s.first_layer, s.end_layer) for s in shards] == [(0, 1), (1, 3), (3, 4)]
    assert [s.shard_id for s in shards] == ["tiny:f32:0-1", "tiny:f32:1-3", "tiny:f32:3-4"]
    assert [(s.has_embedding, s.has_head) for s in shards] == [(True, False), (False, False), (False, True)]
    for shard in shards:
        assert shard.file.name is not None
        data = (media / shard.file.name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard.sha256
        assert shard.file.name == f"shards/{shard.sha256}.onnx"
        assert shard.size_bytes == len(data)
    assert "3 shard(s) built, 0 already there" in output


def test_import_model_twice_registers_nothing_new(media: Path, tiny_gguf: Path) -> None:
    run("import_model", str(tiny_gguf), "--plan", "0-2,2-4", "--name", "tiny", "--quant", "q4")
    before = list(Shard.objects.values_list("pk", "sha256", "file", "created_at"))
    files_before = sorted(p.name for p in (media / "shards").iterdir())
    output = run("import_model", str(tiny_gguf), "--plan", "0-2,2-4", "--name", "tiny", "--quant", "q4")
    assert list(Shard.objects.values_list("pk", "sha256", "file", "created_at")) == before
    assert sorted(p.name for p in (media / "shards").iterdir()) == files_before
    assert LanguageModel.objects.count() == 1
    assert "0 shard(s) built, 2 already there" in output


def test_import_model_rejects_a_bad_plan_and_changes_nothing(media: Path, tiny_gguf: Path) -> None:
    with pytest.raises(CommandError, match="should start at layer 2"):
        run("import_model", str(tiny_gguf), "--plan", "0-2,3-4", "--name", "tiny")
    assert not Shard.objects.exists()
    assert not LanguageModel.objects.exists()


def test_import_model_rejects_an_unknown_source(media: Path) -> None:
    with pytest.raises(CommandError, match="unknown_model"):
        run("import_model", "no-such-model")


def test_import_model_refuses_a_name_bound_to_another_file(media: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    run("import_model", str(tiny_gguf), "--plan", "whole", "--name", "tiny")
    other = write_tiny_gguf(tmp_path / "other.gguf", seed=1)
    with pytest.raises(CommandError, match="model_conflict"):
        run("import_model", str(other), "--plan", "whole", "--name", "tiny")
    assert Shard.objects.count() == 1


def test_generate_runs_the_chain_and_the_whole_model_alike(media: Path, tiny_gguf: Path) -> None:
    run("import_model", str(tiny_gguf), "--plan", "0-1,1-3,3-4", "--name", "tiny")
    run("import_model", str(tiny_gguf), "--plan", "whole", "--name", "tiny")
    args = ("generate", "--model", "tiny", "--prompt", "hello there", "--max-new-tokens", "12")
    whole = run(*args)
    chain = run(*args, "--shards")
    assert "tiny:f32:0-4" in whole and "tiny:f32:1-3" not in whole
    assert "tiny:f32:1-3" in chain and "tiny:f32:0-4" not in chain
    answer = [line for line in whole.splitlines() if line and not line.startswith(("shard", "tiny:"))][0]
    assert answer in chain.splitlines()
    assert "12 new tokens (length)" in whole
    assert "tokens/s" in whole


def test_generate_explains_a_missing_model(media: Path) -> None:
    with pytest.raises(CommandError, match="import_model"):
        run("generate", "--model", "tiny")


def test_a_corrupted_stored_shard_is_refused(media: Path, tiny_gguf: Path) -> None:
    run("import_model", str(tiny_gguf), "--plan", "0-2,2-4", "--name", "tiny")
    shard = Shard.objects.get(first_layer=2)
    assert shard.file.name is not None
    path = Path(default_storage.path(shard.file.name))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardIntegrityError, match="will not be loaded"):
        model_files.shard_runtime(shard)
