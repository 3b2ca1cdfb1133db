"""A job outlives the server that ran it. The real model on three provider processes; the server running the job is
SIGKILLed after the first tokens reached the buyer. On the embedded profile the server comes back on the same
database and its clock ends the job; on the full profile Celery (worker and beat, still alive) ends it while no
server runs. Either way, within the lease plus a round: the job fails with `runner_lost`, the tokens the buyer got
are paid at the cleared prices and the rest of the escrow is refunded, the buyer's stream ends, and the ledger
checks out."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from websockets.exceptions import ConnectionClosed

from market.localstack import LocalMarket

pytestmark = pytest.mark.slow

PG = "postgres://postgres@127.0.0.1:5432"
LEASE = 3  # seconds: RUNNER_LEASE_SECONDS for these servers
LAYERS = 10


def _market(profile: str, work: Path) -> LocalMarket:
    env = {"MEDIA_ROOT": str(work / "media"), "RUNNER_LEASE_SECONDS": str(LEASE), "RUNNER_HEARTBEAT_SECONDS": "1"}
    if profile == "full":
        database = os.environ.get("E2E_RUNNER_DATABASE", "cm_e2e_runner")
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {database}")
        redis_url = f"redis://127.0.0.1:6379/{os.environ.get('E2E_RUNNER_REDIS_DB', '4')}"
        redis.Redis.from_url(redis_url).flushdb()
        env |= {"DATABASE_URL": f"{PG}/{database}", "REDIS_URL": redis_url, "AUCTION_EVERY_SECONDS": "1"}
    else:
        env |= {"DATABASE_URL": f"sqlite:///{work / 'market.sqlite3'}"}  # the clock's own intervals
    return LocalMarket(env=env, logs=work / "logs")


@pytest.mark.parametrize("profile", ["embedded", "full"])
def test_a_job_whose_server_is_killed_is_ended_paid_for_what_was_delivered_and_refunded(
    profile: str, tmp_path: Path
) -> None:
    market = _market(profile, tmp_path)
    try:
        market.manage("migrate", "--noinput", "-v0")
        market.manage("import_model", "smollm2-135m", "--plan", "0-10,10-20,20-30", "--quant", "q4")
        buyer = market.manage("issue_token", "buyer", "--create")
        provider = market.manage("issue_token", "prov", "--create")
        market.start_server()
        for index in range(3):
            market.start_provider(f"p{index}", token=provider)
        market.wait_providers(3, provider, timeout=180)
        job = market.submit(buyer, model="smollm2-135m", prompt="Count from one to fifty.", max_new_tokens=200)
        streamed: list[int] = []

        def kill_after_first_tokens(event: dict[str, Any]) -> None:
            if event["type"] == "token":
                streamed.append(event["token"])
                if len(streamed) == 3:
                    market.kill("server", signal.SIGKILL)

        with pytest.raises((ConnectionClosed, OSError)):  # the buyer's connection dies with the server
            market.stream(job["id"], buyer, on_event=kill_after_first_tokens, timeout=120)
        assert len(streamed) >= 3, "the server was killed mid-job"
        killed_at = time.monotonic()

        if profile == "full":  # Celery's rounds end the job while no server runs
            market.wait(lambda: _state(market, job["id"]) == "failed", 60, "Celery to end the job")
            market.start_server(workers=False)
        else:  # the embedded market's rounds run in its server: bring it back on the same database
            market.start_server()
        market.wait(
            lambda: market.api("GET", f"/api/jobs/{job['id']}/", token=buyer)[1]["state"] == "failed",
            60,
            "the job to end",
        )
        # Ended within the lease plus a third of it (the clock's check) or a beat round, plus the restart.
        assert time.monotonic() - killed_at < LEASE + 20
        _, done = market.api("GET", f"/api/jobs/{job['id']}/", token=buyer)
        assert done["error_code"] == "runner_lost", done
        delivered = len(done["tokens"])
        assert delivered >= 3 and done["tokens"][:3] == streamed[:3]
        assert all(entry["until_step"] is not None for entry in done["pipeline"])

        # Paid: what reached the buyer, at the round's prices; refunded: the rest.
        _, cost = market.api("GET", f"/api/jobs/{job['id']}/cost/", token=buyer)
        assert cost["paid"] == sum(line["payment"] for line in cost["lines"]) > 0
        assert cost["refunded"] == cost["escrowed"] - cost["paid"]
        prompt = done["prompt_tokens"]
        for line in cost["lines"]:
            tokens = (prompt if line["from_step"] == 0 else 0) + line["until_step"] - max(line["from_step"], 1)
            assert line["layer_tokens"] == LAYERS * tokens and line["until_step"] <= delivered
        # The buyer's stream, reopened on the live server, ends at once with the job's end.
        events = market.stream(job["id"], buyer, timeout=30)
        assert events[0]["type"] == "snapshot" and events[0]["tokens"] == done["tokens"]
        assert (events[-1]["type"], events[-1]["state"], events[-1]["error_code"]) == ("done", "failed", "runner_lost")
        assert market.manage("ledger_check").startswith("ledger ok")
    finally:
        market.stop()


def _state(market: LocalMarket, job_id: int) -> str:
    with psycopg.connect(market.env["DATABASE_URL"]) as conn:
        row = conn.execute("SELECT state FROM market_job WHERE id = %s", [job_id]).fetchone()
    return str(row[0]) if row else ""
