"""Fixtures of the market tests: the tiny model, written once per session and imported into each test's storage;
a buyer and a provider account with the signup grant; auction launches recorded instead of run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

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


@pytest.fixture
def alice() -> User:
    return services.account_open(username="alice")[0]


@pytest.fixture
def bob() -> User:
    return services.account_open(username="bob")[0]


@pytest.fixture
def carol() -> User:
    return services.account_open(username="carol")[0]


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr("market.scheduling.job_launch", calls.append)
    monkeypatch.setattr("market.scheduling.job_resume", lambda job_id, epoch: calls.append(-job_id))  # negative: resume
    monkeypatch.setattr("market.scheduling.auction_nudge", lambda: None)
    return calls
