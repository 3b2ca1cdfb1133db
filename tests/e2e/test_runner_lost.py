"""A job outlives the server that ran it. The real model on three provider processes; the server running the job is
SIGKILLed after the first tokens reached the buyer.

- Resumed: the server comes back (embedded profile: the same server on the same database, whose clock takes the
  job over; full profile: a new Daphne beside the Celery worker and beat that kept running, and a worker runs the
  new runner). The providers reconnect, the job is replayed on them and finishes: the buyer gets the tokens an
  uninterrupted run gives and is charged for each step once, the platform pays for the replay, and the ledger
  checks out.
- Ended: no server comes back within RUNNER_RESUME_WITHIN_SECONDS (full profile: Celery alone). The job fails
  with `runner_lost`, the tokens the buyer got are paid at the cleared prices, the rest of the escrow is refunded,
  and the buyer's stream, reopened later, ends."""

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

from market.localstack import LocalMarket, stream_tokens

pytestmark = pytest.mark.slow

PG = "postgres://postgres@127.0.0.1:5432"
LEASE = 3  # seconds: RUNNER_LEASE_SECONDS for these servers
RESUME_WITHIN = 30  # seconds: RUNNER_RESUME_WITHIN_SECONDS (a restarted server and reconnecting providers, under load)
LAYERS = 10
PROMPT = "Count from one to fifty."
MAX_NEW = 60


def _market(profile: str, work: Path) -> LocalMarket:
    env = {
        "MEDIA_ROOT": str(work / "media"),
        "RUNNER_LEASE_SECONDS": str(LEASE),
        "RUNNER_HEARTBEAT_SECONDS": "1",
        "RUNNER_RESUME_WITHIN_SECONDS": str(RESUME_WITHIN),
        "PROVIDER_HEARTBEAT_SECONDS": "2",
    }
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


def _start(market: LocalMarket) -> tuple[str, str]:
    """The model imported, the server and three providers up; the buyer's and the providers' tokens."""
    market.manage("migrate", "--noinput", "-v0")
    market.manage("import_model", "smollm2-135m", "--plan", "0-10,10-20,20-30", "--quant", "q4")
    buyer = market.manage("issue_token", "buyer", "--create")
    provider = market.manage("issue_token", "prov", "--create")
    market.start_server()
    for index in range(3):
        market.start_provider(f"p{index}", token=provider)
    market.wait_providers(3, provider, timeout=180)
    return buyer, provider


def _kill_server_mid_job(market: LocalMarket, job_id: int, buyer: str) -> list[int]:
    """Stream the job and SIGKILL the server once three tokens reached the buyer; the tokens streamed."""
    streamed: list[int] = []

    def kill_after_first_tokens(event: dict[str, Any]) -> None:
        if event["type"] == "token":
            streamed.append(event["token"])
            if len(streamed) == 3:
                market.kill("server", signal.SIGKILL)

    with pytest.raises((ConnectionClosed, OSError)):  # the buyer's connection dies with the server
        market.stream(job_id, buyer, on_event=kill_after_first_tokens, timeout=120)
    assert len(streamed) >= 3, "the server was killed mid-job"
    return streamed


def _job(market: LocalMarket, job_id: int, buyer: str) -> dict[str, Any]:
    job: dict[str, Any] = market.api("GET", f"/api/jobs/{job_id}/", token=buyer)[1]
    return job


@pytest.mark.parametrize("profile", ["embedded", "full"])
def test_a_job_whose_server_is_killed_is_resumed_by_replay_and_gives_the_uninterrupted_tokens(
    profile: str, tmp_path: Path
) -> None:
    market = _market(profile, tmp_path)
    try:
        buyer, provider = _start(market)
        job = market.submit(buyer, model="smollm2-135m", prompt=PROMPT, max_new_tokens=MAX_NEW)
        streamed = _kill_server_mid_job(market, job["id"], buyer)
        killed_at = time.monotonic()
        # Embedded: the same server comes back, and its clock takes the job over. Full: Celery's rounds wait for
        # providers on a live server, which come back with the new Daphne; a worker runs the new runner.
        market.start_server(workers=profile == "embedded")
        first_new: list[float] = []

        def note_first_new(event: dict[str, Any]) -> None:
            if event["type"] == "token" and not first_new:
                first_new.append(time.monotonic())

        events = market.stream(job["id"], buyer, on_event=note_first_new, timeout=240)
        done = _job(market, job["id"], buyer)
        assert done["state"] == "done", done
        assert done["tokens"][: len(streamed)] == streamed
        assert list(stream_tokens(events)) == done["tokens"], "the reopened stream goes on where it stopped"
        assert events[-1]["type"] == "done" and events[-1]["state"] == "done"
        delivered = done["timings"]["replayed_steps"]
        assert 3 <= delivered < len(done["tokens"])
        stalled = (first_new[0] if first_new else time.monotonic()) - killed_at
        print(f"{profile}: {delivered} tokens delivered before the kill; stalled {stalled:.1f} s")

        # Each hop: the lost runner's placement up to what it delivered, then the new one from there.
        for hop in range(3):
            entries = [e for e in done["pipeline"] if e["hop"] == hop]
            assert [e["ended"] for e in entries] == ["runner_lost", "done"], done["pipeline"]
            assert entries[0]["until_step"] == entries[1]["from_step"] == delivered
        # Charged once per step: the replay is free, so the cost is that of an uninterrupted run.
        _, cost = market.api("GET", f"/api/jobs/{job['id']}/cost/", token=buyer)
        steps = len(done["tokens"]) + (1 if done["finish_reason"] == "stop" else 0)
        assert sum(line["layer_tokens"] for line in cost["lines"]) == 3 * LAYERS * (done["prompt_tokens"] + steps - 1)
        assert cost["refunded"] == cost["escrowed"] - cost["paid"]
        # The replay is the platform's to pay: each new placement, for the steps it redid.
        replayed = LAYERS * (done["prompt_tokens"] + delivered - 1)
        assert [line["layer_tokens"] for line in cost["platform_lines"]] == [replayed] * 3
        assert cost["platform_paid"] == sum(line["payment"] for line in cost["platform_lines"]) > 0

        # The same bid again, on the same providers, uninterrupted: the same tokens.
        again = market.submit(buyer, model="smollm2-135m", prompt=PROMPT, max_new_tokens=MAX_NEW)
        market.stream(again["id"], buyer, timeout=240)
        assert _job(market, again["id"], buyer)["tokens"] == done["tokens"]
        assert market.manage("ledger_check").startswith("ledger ok")
    finally:
        market.stop()


def test_a_job_whose_server_stays_down_is_ended_paid_for_what_was_delivered_and_refunded(tmp_path: Path) -> None:
    market = _market("full", tmp_path)
    try:
        buyer, _ = _start(market)
        job = market.submit(buyer, model="smollm2-135m", prompt=PROMPT, max_new_tokens=MAX_NEW)
        streamed = _kill_server_mid_job(market, job["id"], buyer)
        killed_at = time.monotonic()
        # No server: Celery's rounds wait for a live pipeline for RESUME_WITHIN seconds, then end the job.
        market.wait(lambda: _state(market, job["id"]) == "failed", 90, "Celery to end the job")
        ended_after = time.monotonic() - killed_at
        assert ended_after < LEASE + RESUME_WITHIN + 20
        print(f"ended {ended_after:.1f} s after the kill")
        market.start_server(workers=False)
        done = _job(market, job["id"], buyer)
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
