"""Schemathesis against the live server: every operation of the OpenAPI schema, with generated inputs, a signed-in
token, answers only statuses, content types and bodies that the schema documents, and never a 5xx.

The server is Daphne in a process of its own (market/localstack.py, as the demo starts it) on the embedded profile
with a database in a temporary folder, the tiny model imported and no chain; rate limits off (a 429 is documented,
but would stop the fuzzing early). A few examples per operation keep it well under a minute."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from inference.tiny import write_tiny_gguf
from market.localstack import LocalMarket

EXAMPLES = 8  # per operation
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalMarket, str]]:
    work = tmp_path_factory.mktemp("fuzz")
    env = {
        "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
        "REDIS_URL": "",
        "CHAIN_RPC_URL": "",
        "MEDIA_ROOT": str(work / "media"),
        "MARKET_CLOCK": "false",
        "THROTTLE_USER_RATE": "off",
        "THROTTLE_ANON_RATE": "off",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    market = LocalMarket(env=env, logs=work / "logs")
    market.manage("migrate", "--noinput", "-v0")
    gguf = write_tiny_gguf(Path(work / "tiny.gguf"))
    market.manage("import_model", str(gguf), "--plan", "0-2,2-4", "--name", "tiny")
    token = market.manage("issue_token", "fuzz", "--create").splitlines()[-1]
    try:
        market.start_server(workers=False)
        yield market, token
    finally:
        market.stop()


def test_every_operation_answers_as_documented(live: tuple[LocalMarket, str]) -> None:
    market, token = live
    api_schema = schemathesis.openapi.from_url(f"{market.url}/api/schema/")
    operations = [result.ok() for result in api_schema.get_all_operations()]  # type: ignore[union-attr]  # Err raises
    assert len(operations) > 20  # every operation of the API, not a schema that lost them
    failures: dict[str, str] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def answers_as_documented(case: Any) -> None:
            case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=CHECKS, timeout=30)

        try:
            answers_as_documented()
        except Exception as exc:  # noqa: BLE001  # every operation is tried; all failures are reported together
            failures[operation.label] = str(exc)[:2000]
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
