"""Fixtures of the market tests: the tiny model, written once per session and imported into each test's storage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inference.tiny import write_tiny_gguf
from market import services
from market.models import LanguageModel


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def model(tmp_path: Path, settings: Any, tiny_gguf: Path) -> LanguageModel:
    """The tiny model imported as two shards (a chain that can run), stored under a temporary MEDIA_ROOT."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return services.model_import(source=str(tiny_gguf), plan="0-2,2-4", name="tiny").model
