"""The honest market's figures: what a buyer waits for, how far each measure of speed spreads across identical
providers, and how long a job stalls when the server running it dies (it is resumed) or stays dead (it is ended).

Starts a whole market per profile, each with three headless provider processes (one thread each) serving the real
model (SmolLM2-135M q4, shards 0-10,10-20,20-30), with RUNNER_LEASE_SECONDS=5 and RUNNER_HEARTBEAT_SECONDS=1 and
every other setting at its default (rounds every AUCTION_EVERY_SECONDS = 2 s, AUCTION_IDLE_SECONDS = 30 s,
RUNNER_RESUME_WITHIN_SECONDS = 60 s; 10 s for the ended kill, 3b):
  - memory: the embedded profile: Daphne keeps the market's clock, the in-memory channel layer, SQLite (temp dir);
  - redis:  the full profile: Daphne, a Celery worker and beat, the Redis channel layer (db 3, flushed),
            PostgreSQL (database bench_market, dropped and created).

1. Bid to first token: GET /api/quote/, then POST /api/jobs/ with max_price = the quote's `bid`, timed until the
   first `token` event of the job's stream (max_new_tokens 8); median and p90 over --rounds jobs after one warm-up
   job. Beside it, the quote's price (the asks for prompt + max_new_tokens tokens) against what the job paid
   (GET /api/jobs/<id>/cost/).
2. Spread of speed across the three identical providers (GET /api/providers/), as max/min and coefficient of
   variation (population stdev / mean) of three figures: `claimed` (claimed_ns_per_layer_token: what the provider
   timed itself, never priced) and `benchmark` (ns_per_layer_token: the server-timed challenge, what the market
   prices by until it has timed SPEED_MIN_SAMPLES = 20 decode steps), both as the providers connected; `observed`
   (observed_ns_per_layer_token, after the jobs of 1.), with each provider's observed_spread ({jobs, low, high}:
   the 10th/90th percentile of its latest jobs' medians) and observed_steps.
3. The server running a job dies: a job of max_new_tokens 200; SIGKILL of Daphne after its third token reached the
   buyer (a few more may already be in the buyer's socket).
   a. Resumed (--stalls per profile): the server restarts at once (memory: start_server(), which also brings back
      the clock that takes the job over; redis: Daphne alone, start_server(workers=False), beside the worker and
      beat that kept running: beat's round takes the job over and a worker runs the new runner). The buyer reopens
      the job's stream as soon as the server answers; `stall_s` is from the kill to the first `token` event after
      the reopened stream's snapshot: the stall the buyer sees. Recorded: `lease_out_after_kill_s` (see below),
      the job's timings.replay_s and replayed_steps (prompt + tokens stored before the kill, replayed through the
      fresh pipeline), the final state. Checked: `done`; the tokens the buyer got before the kill are a prefix of
      the final tokens; the snapshot + new token events are the final tokens; replayed_steps = the tokens stored
      at the kill; the buyer paid each step once (the cost lines' layer_tokens sum to 30 x (prompt_tokens + steps
      - 1), steps = tokens, + 1 when finish_reason is `stop`); the platform paid the replay (platform_paid > 0,
      = its lines' payments); paid = the lines' payments; refunded = escrowed - paid.
   b. Ended (--ended, redis only, last): to keep it short, the whole market (Daphne, worker, beat) is first
      restarted (SIGTERM, then start_server()) with RUNNER_RESUME_WITHIN_SECONDS=10 instead of 60, so the job ends
      ~15 s after the kill rather than ~65 s. (Not for the whole profile: that bound also ends a resumable job whose
      providers are not back on a live server within 10 s of the lease running out, and here they come back 5-10 s
      after the kill: Daphne restarts in 2-7 s beside the worker, and a provider whose third try, 5.6-8.4 s after
      the kill, came just before it answered tries again ~8 s later.) The server is then killed the same way and
      not restarted; PostgreSQL is polled every 0.1 s until Celery's rounds, finding no provider on a live server
      within those 10 s after the lease ran out, end the job. `ended_s` is from the kill to the job being `failed`
      (checked: with `runner_lost`). Then Daphne alone restarts; checked: every cost line's until_step <= the
      tokens delivered, paid = the lines' payments > 0, refunded = escrowed - paid, the buyer's tokens before the
      kill a prefix of the stored ones, the reopened stream ends with runner_lost. (The memory profile has no ended
      kill: its checks run in the server, so nothing happens while it is down.)
   `manage.py ledger_check` passes at the end of each profile.

    .venv/bin/python bench/market.py [--rounds 5] [--stalls 5] [--ended 1] [--profiles memory,redis]

Defaults: 5 timed bids, 5 resumed kills per profile, 1 ended kill: about 5 minutes on a 2-core machine (--stalls 3:
about 4; a resumed kill costs ~20 s, the ended one ~60 s with the restart before it). Prints JSON and a one-line
summary; writes bench/results/market.json and market.png. Each profile's logs and database stay in a temp dir (named
in the JSON); the providers' shard caches are removed. Exits non-zero when a check above fails.

Reading the figures. The lease ran out at the dead runner's last renewal + RUNNER_LEASE_SECONDS: the first moment a
check may take the job over or start the clock towards ending it. The last renewal is the job's runner_seen_at,
read from the database right after the kill: the server is dead, so nothing renews it, and no takeover can rewrite
it before the lease runs out (>= LEASE - HEARTBEAT = 4 s later). A takeover does rewrite it (to its own time, then
the new runner renews it), so reading it after the resume would be wrong; instead the takeover stores
runner_lost_at = that same renewal + RUNNER_HEARTBEAT_SECONDS, which is checked against it
(`takeover_saw_same_renewal`): proof the job was taken over from that lease. A takeover needs both the lease out
and a pipeline of providers on a live server: `providers_back_after_kill_s` is when the last of the three passed its
benchmark on the restarted server (from their own log lines; they retry after 1, 2, 4, 8 s, so one that tried just
before the server answered comes back 4-8 s later). The resumed stall is the later of the two, the wait for the next
check (memory: the clock every LEASE/3; redis: beat's round every 2 s), the new runner's start and session opens,
the replay (`replay_s`) and the first new step. `resume_deadline_after_kill_s` (lease out +
RUNNER_RESUME_WITHIN_SECONDS) is when a job still without such a pipeline would be ended instead.

The observed speed is the time from the previous hop's output to the provider's own, per layer: it includes the
relay and the hop's fixed work (the first shard embeds, the last one holds the LM head), so it is not a provider's
compute alone and depends on which hops it served (`shards_served`, under each bar of the plot). The benchmark is
the server's clock around a challenge (prompt and round trip amortised in), the claim the provider's own clock
around its decode steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.exceptions import ConnectionClosed  # noqa: E402

from market.localstack import LocalMarket, stream_tokens  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PG = "postgres://postgres@127.0.0.1:5432"
DATABASE = "bench_market"
REDIS_URL = "redis://127.0.0.1:6379/3"
MODEL = {"model": "smollm2-135m", "quant": "q4"}
SHORT_PROMPT, SHORT_TOKENS = "Name three colours.", 8
LONG_PROMPT, LONG_TOKENS = "Write a long story about a dragon who learns to read.", 200
LEASE, HEARTBEAT = 5, 1  # seconds: RUNNER_LEASE_SECONDS and RUNNER_HEARTBEAT_SECONDS of these markets
RESUME_WITHIN = 60  # RUNNER_RESUME_WITHIN_SECONDS (the default) of the resumed kills
ENDED_RESUME_WITHIN = 10  # RUNNER_RESUME_WITHIN_SECONDS of the market the ended kill runs on (redis, last)
KILL_AFTER = 3  # tokens the buyer has received when the server is killed
PROVIDERS = 3
LAYERS = 30  # the model's decoder layers: every step runs all of them, over the three hops
SPEEDS = (  # GET /api/providers/ field, and what it is
    ("claimed", "claimed_ns_per_layer_token", "claimed (self-timed)"),
    ("benchmark", "ns_per_layer_token", "benchmark (server-timed)"),
    ("observed", "observed_ns_per_layer_token", "observed (after the jobs)"),
)


def profile_env(name: str, work: Path) -> dict[str, str]:
    env = {
        "MEDIA_ROOT": str(work / "media"),
        "LOG_LEVEL": "WARNING",
        "SIGNUP_GRANT": str(10**12),
        "RUNNER_LEASE_SECONDS": str(LEASE),
        "RUNNER_HEARTBEAT_SECONDS": str(HEARTBEAT),
    }
    if name == "redis":
        import psycopg
        import redis

        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {DATABASE}")
        redis.Redis.from_url(REDIS_URL).flushdb()
        return env | {"DATABASE_URL": f"{PG}/{DATABASE}", "REDIS_URL": REDIS_URL}
    return env | {"DATABASE_URL": f"sqlite:///{work / 'market.sqlite3'}"}


def run_profile(name: str, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"bench-market-{name}-"))
    with LocalMarket(env=profile_env(name, work), logs=work / "logs") as market:
        market.manage("migrate", "--noinput", "-v0")
        market.manage("import_model", "smollm2-135m", "--plan", "0-10,10-20,20-30", "--quant", "q4")
        buyer = market.manage("issue_token", "bench-buyer", "--create")
        provider = market.manage("issue_token", "bench-provider", "--create")
        started = time.time()
        market.start_server()
        for index in range(PROVIDERS):
            market.start_provider(f"bench-{index}", token=provider, threads=1)
        wait_fresh(market, provider, since=started, timeout=300)
        benchmarks = providers_view(market, provider)
        bids = []
        for index in range(args.rounds + 1):  # job 0 warms up: the first sessions on each provider
            result = bid_round(market, buyer)
            if index:
                bids.append(result)
            log(f"{name}: bid {index}/{args.rounds}: first token after {result['bid_to_first_token_s']:.3f} s")
        speeds = speed_spread(benchmarks, providers_view(market, provider), bids)
        resumed = []
        for index in range(args.stalls):
            resumed.append(resume_once(name, market, buyer, provider))
            r = resumed[-1]
            log(
                f"{name}: resumed kill {index + 1}/{args.stalls}: {r['state']}, first new token after "
                f"{r['stall_s']} s (lease out {r['lease_out_after_kill_s']} s, replay {r['replay_s']} s)"
            )
        ended = []
        if name == "redis" and args.ended:
            restart_market(market, provider, RUNNER_RESUME_WITHIN_SECONDS=str(ENDED_RESUME_WITHIN))
        for index in range(args.ended if name == "redis" else 0):
            ended.append(end_once(market, buyer, provider))
            e = ended[-1]
            log(f"{name}: ended kill {index + 1}/{args.ended}: {e['state']}, {e['error_code']} after {e['ended_s']} s")
        ledger = market.manage("ledger_check")
    for cache in [work / "media", *(work / "logs").glob("cache-*")]:  # shard files: ~0.5 GB per provider
        shutil.rmtree(cache, ignore_errors=True)
    result = {
        "services": services_info(name),
        "settings": {"RUNNER_RESUME_WITHIN_SECONDS": RESUME_WITHIN}
        | ({"ended_kill_RUNNER_RESUME_WITHIN_SECONDS": ENDED_RESUME_WITHIN} if ended else {}),
        "bid_to_first_token": summarise_bids(bids),
        "speed": speeds,
        "resumed": summarise_resumed(resumed),
        "ended": summarise_ended(ended) if ended else None,
        "ledger_check": ledger.splitlines()[0] if ledger else "",
        "ledger_ok": ledger.startswith("ledger ok"),
        "logs": str(work / "logs"),
    }
    return result


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def wait_fresh(market: LocalMarket, token: str, *, since: float, timeout: float) -> None:
    """Every provider connected to the server started at `since` (a dead server's rows still read online for up to
    three provider heartbeats), benchmarked and idle."""

    def fresh() -> bool:
        rows = market.online_providers(token)
        return len(rows) == PROVIDERS and all(
            datetime.fromisoformat(p["last_seen"]).timestamp() >= since and p["busy_slots"] == 0 for p in rows
        )

    market.wait(fresh, timeout, f"{PROVIDERS} providers connected to the new server")


def providers_view(market: LocalMarket, token: str) -> dict[str, dict[str, Any]]:
    keys = (
        "claimed_ns_per_layer_token",
        "ns_per_layer_token",
        "observed_ns_per_layer_token",
        "observed_steps",
        "observed_spread",
        "ask",
        "reliability_permille",
    )
    return {p["name"]: {k: p[k] for k in keys} for p in market.online_providers(token)}


def quote(market: LocalMarket, token: str, prompt: str, max_new_tokens: int) -> dict[str, Any]:
    query = urllib.parse.urlencode(MODEL | {"prompt": prompt, "max_new_tokens": max_new_tokens})
    status, body = market.api("GET", f"/api/quote/?{query}", token=token)
    if status != 200:
        raise RuntimeError(f"quote refused ({status}): {body}")
    return dict(body)


def bid_round(market: LocalMarket, buyer: str) -> dict[str, Any]:
    quoted_at = time.perf_counter()
    offer = quote(market, buyer, SHORT_PROMPT, SHORT_TOKENS)
    bid_at = time.perf_counter()
    job = market.submit(buyer, **MODEL, prompt=SHORT_PROMPT, max_new_tokens=SHORT_TOKENS, max_price=offer["bid"])
    first: list[float] = []

    def on_event(event: dict[str, Any]) -> None:
        # A snapshot that already holds tokens would mean the stream connected late; then it is the first sight.
        if not first and (event["type"] == "token" or (event["type"] == "snapshot" and event["tokens"])):
            first.append(time.perf_counter())

    market.stream(job["id"], buyer, on_event=on_event, timeout=120)
    done = market.api("GET", f"/api/jobs/{job['id']}/", token=buyer)[1]
    if done["state"] != "done" or not first:
        raise RuntimeError(f"job {job['id']} {done['state']}: {done['error']}")
    cost = job_cost(market, buyer, job["id"])
    return {
        "job": job["id"],
        "bid_to_first_token_s": round(first[0] - bid_at, 4),
        "quote_to_first_token_s": round(first[0] - quoted_at, 4),
        "tokens": len(done["tokens"]),
        "prompt_tokens": done["prompt_tokens"],
        "quote_tokens": offer["tokens"],
        "quote_price": offer["price"],
        "quote_bid": offer["bid"],
        "paid": cost["paid"],
        "refunded": cost["refunded"],
        "paid_over_quote_price": round(cost["paid"] / offer["price"], 4),
        "paid_over_bid": round(cost["paid"] / offer["bid"], 4),
        "asks": [line["ask"] for line in offer["pipeline"]],
        "unit_prices": [line["unit_price"] for line in cost["lines"]],
        "served": {line["provider_name"]: line["shard"] for line in cost["lines"]},
    }


def job_cost(market: LocalMarket, token: str, job_id: int) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def settled() -> bool:
        status, body = market.api("GET", f"/api/jobs/{job_id}/cost/", token=token)
        found[:] = [body] if status == 200 else []
        return bool(found)

    market.wait(settled, 30, f"job {job_id} to be settled")
    return found[0]


def spread(values: list[float]) -> dict[str, float] | None:
    if len(values) < 2 or any(v != v for v in values):  # a provider without the figure (NaN): no spread
        return None
    return {
        "max_over_min": round(max(values) / min(values), 4),
        "cv": round(statistics.pstdev(values) / statistics.mean(values), 4),
    }


def speed_spread(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]], bids: list[dict[str, Any]]
) -> dict[str, Any]:
    """Claimed and benchmark as the providers connected (each reconnection benchmarks again), observed after the
    bids; across the three providers."""
    names = sorted(after)
    served = {n: sorted({b["served"].get(n, "") for b in bids} - {""}) for n in names}
    providers = {
        n: {
            "shards_served": served[n],
            "ask_before": before[n]["ask"],
            "ask_after": after[n]["ask"],
            "claimed_ns_per_layer_token": before[n]["claimed_ns_per_layer_token"],
            "ns_per_layer_token": before[n]["ns_per_layer_token"],
            "observed_ns_per_layer_token": after[n]["observed_ns_per_layer_token"],
            "observed_steps": after[n]["observed_steps"],
            "observed_spread": after[n]["observed_spread"],
            "reliability_permille": after[n]["reliability_permille"],
        }
        for n in names
    }
    return {"providers": providers} | {
        short: spread([float(providers[n][key] or "nan") for n in names]) for short, key, _ in SPEEDS
    }


def kill_mid_job(market: LocalMarket, buyer: str) -> tuple[dict[str, Any], list[int], float, float]:
    """A long job at the quote, its server SIGKILLed once KILL_AFTER tokens reached the buyer: the job, the tokens the
    buyer got, the kill's monotonic and wall-clock times, and its last lease renewal."""
    offer = quote(market, buyer, LONG_PROMPT, LONG_TOKENS)
    job = market.submit(buyer, **MODEL, prompt=LONG_PROMPT, max_new_tokens=LONG_TOKENS, max_price=offer["bid"])
    streamed: list[int] = []
    killed: list[float] = []

    def kill_after_first_tokens(event: dict[str, Any]) -> None:
        if event["type"] == "token":
            streamed.append(event["token"])
            if len(streamed) == KILL_AFTER:
                killed[:] = [time.monotonic(), time.time()]
                market.kill("server", signal.SIGKILL)

    with contextlib.suppress(ConnectionClosed, OSError):  # the buyer's connection dies with the server
        market.stream(job["id"], buyer, on_event=kill_after_first_tokens, timeout=120)
    if not killed:
        raise RuntimeError(f"job {job['id']} ended before {KILL_AFTER} tokens: no kill")
    return job, streamed, killed[0], killed[1]


def resume_once(name: str, market: LocalMarket, buyer: str, provider: str) -> dict[str, Any]:
    job, streamed, killed, killed_wall = kill_mid_job(market, buyer)
    # The server is dead: nothing renews the lease, and no takeover may rewrite it before the lease is out.
    at_kill = job_row(market, job["id"])
    restarted = time.time()
    market.start_server(workers=name != "redis")  # redis: Daphne alone; the worker and beat kept running
    back = time.monotonic()
    snapshot: list[list[int]] = []
    first_new: list[tuple[float, int]] = []

    def note_first_new(event: dict[str, Any]) -> None:
        if event["type"] == "snapshot":
            snapshot.append(event["tokens"])
        elif event["type"] == "token" and not first_new:
            first_new.append((time.monotonic(), event["index"]))

    events = market.stream(job["id"], buyer, on_event=note_first_new, timeout=240)
    done = market.api("GET", f"/api/jobs/{job['id']}/", token=buyer)[1]
    after = job_row(market, job["id"])
    cost = job_cost(market, buyer, job["id"])
    lease_out = at_kill["runner_seen_at"] + LEASE
    timings = done["timings"]
    tokens = done["tokens"]
    steps = len(tokens) + (1 if done["finish_reason"] == "stop" else 0)
    replayed = timings.get("replayed_steps")
    platform_lines = cost.get("platform_lines") or []
    result = {
        "job": job["id"],
        "state": done["state"],
        "error_code": done["error_code"],
        "stall_s": round(first_new[0][0] - killed, 3) if first_new else None,
        "lease_out_after_kill_s": round(lease_out - killed_wall, 3),
        "replay_s": timings.get("replay_s"),
        "replayed_steps": replayed,
        "first_new_after_lease_out_s": round(first_new[0][0] - killed - (lease_out - killed_wall), 3)
        if first_new
        else None,
        "server_back_after_kill_s": round(back - killed, 3),
        "providers_back_after_kill_s": providers_back(market, since=killed_wall),
        "resume_deadline_after_kill_s": round(lease_out + RESUME_WITHIN - killed_wall, 3),
        "takeover_saw_same_renewal": after["runner_lost_at"] is not None
        and abs(after["runner_lost_at"] - HEARTBEAT - at_kill["runner_seen_at"]) < 0.002,
        "runner_epoch": after["runner_epoch"],
        "streamed_before_kill": len(streamed),
        "stored_at_kill": len(at_kill["tokens"]),
        "snapshot_tokens": len(snapshot[0]) if snapshot else None,
        # the reopened stream's snapshot came before any new token: its first token event is the first new one
        "snapshot_before_resume": bool(snapshot) and snapshot[0] == at_kill["tokens"],
        "tokens": len(tokens),
        "prompt_tokens": done["prompt_tokens"],
        "finish_reason": done["finish_reason"],
        "escrowed": cost["escrowed"],
        "paid": cost["paid"],
        "refunded": cost["refunded"],
        "layer_tokens_paid": sum(line["layer_tokens"] for line in cost["lines"]),
        "platform_paid": cost.get("platform_paid", 0),
        "platform_layer_tokens": [line["layer_tokens"] for line in platform_lines],
    }
    result["checks"] = {
        "done": done["state"] == "done",
        "prefix": tokens[: len(streamed)] == streamed and tokens[: len(at_kill["tokens"])] == at_kill["tokens"],
        "stream_continued": list(stream_tokens(events)) == tokens
        and (events[-1]["type"], events[-1].get("state")) == ("done", "done"),
        "replayed_what_was_stored": replayed == len(at_kill["tokens"]) >= KILL_AFTER,
        "paid_each_step_once": result["layer_tokens_paid"] == LAYERS * (done["prompt_tokens"] + steps - 1),
        "platform_paid_replay": cost.get("platform_paid", 0) == sum(line["payment"] for line in platform_lines) > 0,
        "paid_is_lines": cost["paid"] == sum(line["payment"] for line in cost["lines"]) > 0,
        "refunded_rest": cost["refunded"] == cost["escrowed"] - cost["paid"],
        "taken_over": result["takeover_saw_same_renewal"] and after["runner_epoch"] == at_kill["runner_epoch"] + 1,
        "snapshot_before_resume": result["snapshot_before_resume"],
    }
    wait_fresh(market, provider, since=restarted, timeout=120)  # the next kill needs all three back
    return result


def restart_market(market: LocalMarket, provider: str, **env: str) -> None:
    """Stop Daphne, the worker and beat (SIGTERM: the server takes its providers offline) and start them again with
    `env` added; back once the providers have reconnected."""
    market.env.update(env)
    for name in ("beat", "worker", "server"):
        market.kill(name, signal.SIGTERM)
    restarted = time.time()
    market.start_server()
    wait_fresh(market, provider, since=restarted, timeout=180)


def providers_back(market: LocalMarket, *, since: float) -> float | None:
    """Seconds from `since` until the last of the providers passed its benchmark on the restarted server (from then
    on a takeover finds a pipeline), by the providers' own log lines ("%(asctime)s provider ...": local time, ms);
    None when one has not."""
    back = []
    for index in range(PROVIDERS):
        times = []
        for line in market.log_text(f"bench-{index}").splitlines():
            if " provider the server measured " in line:
                at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                times += [at] if at >= since else []
        if not times:
            return None
        back.append(min(times))
    return round(max(back) - since, 3)


def end_once(market: LocalMarket, buyer: str, provider: str) -> dict[str, Any]:
    """The redis profile's ended path: no server comes back until Celery's rounds have ended the job."""
    job, streamed, killed, killed_wall = kill_mid_job(market, buyer)
    at_kill = job_row(market, job["id"])
    state, ended = poll_final(market, job["id"], timeout=LEASE + ENDED_RESUME_WITHIN + 60)
    row = job_row(market, job["id"])
    restarted = time.time()
    market.start_server(workers=False)
    done = market.api("GET", f"/api/jobs/{job['id']}/", token=buyer)[1]
    cost = job_cost(market, buyer, job["id"])
    reopened = market.stream(job["id"], buyer, timeout=30)
    lease_out = at_kill["runner_seen_at"] + LEASE
    delivered = len(done["tokens"])
    result = {
        "job": job["id"],
        "state": state,
        "error_code": done["error_code"],
        "ended_s": round(ended - killed, 3),
        "ended_by_finished_at_s": round(row["finished_at"] - killed_wall, 3) if row["finished_at"] else None,
        "lease_out_after_kill_s": round(lease_out - killed_wall, 3),
        "ended_after_lease_out_s": round(ended - killed - (lease_out - killed_wall), 3),
        "resume_within_s": int(market.env["RUNNER_RESUME_WITHIN_SECONDS"]),
        "streamed_before_kill": len(streamed),
        "delivered": delivered,
        "until_steps": [line["until_step"] for line in cost["lines"]],
        "escrowed": cost["escrowed"],
        "paid": cost["paid"],
        "refunded": cost["refunded"],
        "platform_paid": cost.get("platform_paid", 0),
    }
    result["checks"] = {
        "runner_lost": (state, done["error_code"]) == ("failed", "runner_lost"),
        "paid_for_delivered": bool(cost["lines"])
        and all(line["until_step"] <= delivered for line in cost["lines"])
        and cost["paid"] == sum(line["payment"] for line in cost["lines"]) > 0
        and cost["refunded"] == cost["escrowed"] - cost["paid"]
        and done["tokens"][: len(streamed)] == streamed,
        "stream_ended": reopened[0]["tokens"] == done["tokens"]
        and (reopened[-1]["type"], reopened[-1].get("error_code")) == ("done", "runner_lost"),
    }
    wait_fresh(market, provider, since=restarted, timeout=180)  # backoff grew while the server was down
    return result


def poll_final(market: LocalMarket, job_id: int, timeout: float) -> tuple[str, float]:
    """The job's first final state in the database and the monotonic time it was read, polled every 0.1 s."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        state = job_row(market, job_id)["state"]
        if state in ("done", "failed", "cancelled", "expired"):
            return state, time.monotonic()
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} did not end within {timeout} s")


def job_row(market: LocalMarket, job_id: int) -> dict[str, Any]:
    """What the API does not show of a job, read from the market's database: its state, stored tokens, lease
    (runner_seen_at), runner_epoch, runner_lost_at and finished_at (times as Unix seconds)."""
    columns = ("state", "tokens", "runner_seen_at", "runner_epoch", "runner_lost_at", "finished_at")
    query = f"SELECT {', '.join(columns)} FROM market_job WHERE id = "
    url = market.env["DATABASE_URL"]
    if url.startswith("sqlite:///"):
        import sqlite3

        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
            values = db.execute(query + "?", [job_id]).fetchone()
        row = dict(zip(columns, values, strict=True))
        row["tokens"] = json.loads(row["tokens"])
        for key in ("runner_seen_at", "runner_lost_at", "finished_at"):  # Django stores naive UTC text in SQLite
            row[key] = row[key] and datetime.fromisoformat(row[key]).replace(tzinfo=UTC).timestamp()
        return row
    import psycopg

    with psycopg.connect(url) as conn:
        found = conn.execute(query + "%s", [job_id]).fetchone()
    assert found is not None
    row = dict(zip(columns, found, strict=True))
    for key in ("runner_seen_at", "runner_lost_at", "finished_at"):
        row[key] = row[key] and row[key].timestamp()
    return row


def p90(values: list[float]) -> float:
    return values[0] if len(values) < 2 else statistics.quantiles(values, n=10, method="inclusive")[-1]


def median(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def summarise_bids(bids: list[dict[str, Any]]) -> dict[str, Any]:
    waits = [b["bid_to_first_token_s"] for b in bids]
    return {
        "median_s": round(statistics.median(waits), 4),
        "p90_s": round(p90(waits), 4),
        "quote_to_first_token_median_s": round(statistics.median(b["quote_to_first_token_s"] for b in bids), 4),
        "paid_over_quote_price_median": round(statistics.median(b["paid_over_quote_price"] for b in bids), 4),
        "paid_over_bid_median": round(statistics.median(b["paid_over_bid"] for b in bids), 4),
        "rounds": bids,
    }


def summarise_resumed(kills: list[dict[str, Any]]) -> dict[str, Any]:
    stalls = [k["stall_s"] for k in kills if k["stall_s"] is not None]
    checks = sorted({name for k in kills for name in k["checks"]})
    return {
        "stall_median_s": median(stalls),
        "stall_max_s": max(stalls) if stalls else None,
        "lease_out_median_s": median([k["lease_out_after_kill_s"] for k in kills]),
        "providers_back_median_s": median([k["providers_back_after_kill_s"] for k in kills]),
        "resume_deadline_median_s": median([k["resume_deadline_after_kill_s"] for k in kills]),
        "replay_median_s": median([k["replay_s"] for k in kills]),
        "first_new_after_lease_out_median_s": median([k["first_new_after_lease_out_s"] for k in kills]),
        "replayed_steps": [k["replayed_steps"] for k in kills],
        "platform_paid_median": median([k["platform_paid"] for k in kills]),
        "all": {name: all(k["checks"][name] for k in kills) for name in checks},
        "ok": all(all(k["checks"].values()) for k in kills),
        "repeats": kills,
    }


def summarise_ended(kills: list[dict[str, Any]]) -> dict[str, Any]:
    checks = sorted({name for k in kills for name in k["checks"]})
    return {
        "ended_median_s": median([k["ended_s"] for k in kills]),
        "lease_out_median_s": median([k["lease_out_after_kill_s"] for k in kills]),
        "all": {name: all(k["checks"][name] for k in kills) for name in checks},
        "ok": all(all(k["checks"].values()) for k in kills),
        "repeats": kills,
    }


def services_info(name: str) -> dict[str, str]:
    import sqlite3

    if name != "redis":
        return {"database": f"SQLite {sqlite3.sqlite_version}", "channel_layer": "in-memory"}
    import psycopg
    import redis

    with psycopg.connect(f"{PG}/postgres") as conn:
        version = conn.info.server_version
    info = redis.Redis.from_url(REDIS_URL).info("server")
    return {
        "database": f"PostgreSQL {version // 10000}.{version % 10000}",
        "channel_layer": f"Redis {info['redis_version']}",
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = results["profiles"]
    fig, (waits, speeds, stalls) = plt.subplots(1, 3, figsize=(19, 5.4), gridspec_kw={"width_ratios": [1, 1.7, 1.2]})
    for i, (name, r) in enumerate(profiles.items()):
        bids = r["bid_to_first_token"]
        values = [b["bid_to_first_token_s"] for b in bids["rounds"]]
        waits.scatter([i] * len(values), values, alpha=0.6, label=f"{name}: one job")
        waits.hlines(bids["median_s"], i - 0.25, i + 0.25, colors="black")
        waits.hlines(bids["p90_s"], i - 0.25, i + 0.25, colors="grey", linestyles="--")
        waits.annotate(
            f"median {bids['median_s']:.2f} s, p90 {bids['p90_s']:.2f} s\n"
            f"paid / quote {bids['paid_over_quote_price_median']:.2f}",
            (i, bids["p90_s"]),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize="small",
        )
    waits.set_xticks(range(len(profiles)), list(profiles))
    waits.set_xlim(-0.6, len(profiles) - 0.4)
    slowest = max(b["bid_to_first_token_s"] for r in profiles.values() for b in r["bid_to_first_token"]["rounds"])
    waits.set_ylim(0, 1.15 * max(slowest, 1.25 * max(r["bid_to_first_token"]["p90_s"] for r in profiles.values())))
    waits.set_ylabel("s from POST /api/jobs/ to the first token")
    waits.set_title(f"Bid at the quote to first token ({SHORT_TOKENS}-token jobs)")

    width = 0.27
    rows_of = {name: r["speed"]["providers"] for name, r in profiles.items()}
    top = max(
        max(row[key] or 0, (row["observed_spread"] or {}).get("high", 0))
        for rows in rows_of.values()
        for row in rows.values()
        for _, key, _ in SPEEDS
    )
    for i, (name, rows) in enumerate(rows_of.items()):
        for k, (_, key, label) in enumerate(SPEEDS):
            x = [i * 4 + p + (k - 1) * width for p in range(len(rows))]
            heights = [(row[key] or 0) / 1e6 for row in rows.values()]
            errors = None
            if key == "observed_ns_per_layer_token":  # the 10th-90th percentile of the latest jobs' medians
                low = [((row["observed_spread"] or {}).get("low") or row[key] or 0) / 1e6 for row in rows.values()]
                high = [((row["observed_spread"] or {}).get("high") or row[key] or 0) / 1e6 for row in rows.values()]
                errors = [
                    [max(0.0, h - lo) for h, lo in zip(heights, low, strict=True)],
                    [max(0.0, hi - h) for h, hi in zip(heights, high, strict=True)],
                ]
            speeds.bar(
                x,
                heights,
                width,
                color=f"C{k}",
                label=label if i == 0 else None,
                yerr=errors,
                capsize=2,
                error_kw={"elinewidth": 0.8},
            )
        s = profiles[name]["speed"]
        table = "\n".join(
            f"{short:<9} {s[short]['max_over_min']:5.2f}  {s[short]['cv']:4.2f}" if s[short] else f"{short:<9}  n/a"
            for short, _, _ in SPEEDS
        )
        speeds.annotate(
            f"{name:<9} max/min   CV\n{table}",
            (i * 4 + 1, 1.04 * top / 1e6),
            ha="center",
            fontsize="small",
            family="monospace",
        )
    ticks = [  # the observed speed depends on the hop too (the first embeds, the last holds the head): name it
        (i * 4 + p, f"{n}\n{' '.join(s.rsplit(':', 1)[-1] for s in row['shards_served'])}")
        for i, rows in enumerate(rows_of.values())
        for p, (n, row) in enumerate(rows.items())
    ]
    speeds.set_xticks([t[0] for t in ticks], [t[1] for t in ticks], fontsize="small")
    speeds.set_ylim(0, 1.6 * top / 1e6)
    speeds.set_ylabel("ms per layer-token")
    speeds.set_title(
        "Three identical providers: claimed, benchmark, observed speed\n(observed: bar = median, "
        "whisker = 10th-90th pct of its latest jobs)",
        fontsize="medium",
    )
    speeds.legend(fontsize="small", loc="upper right")

    highest = 0.0
    for i, r in enumerate(profiles.values()):
        resumed = r["resumed"]["repeats"]
        values = [k["stall_s"] for k in resumed if k["stall_s"] is not None]
        lease_out = [k["lease_out_after_kill_s"] for k in resumed]
        at = i - (0.15 if r["ended"] else 0)
        stalls.scatter(
            [at] * len(values), values, alpha=0.6, color="C0", label="resumed: first new token" if i == 0 else None
        )
        stalls.scatter(
            [at] * len(lease_out), lease_out, marker="x", color="C3", label="lease ran out" if i == 0 else None
        )
        back = [k["providers_back_after_kill_s"] for k in resumed if k["providers_back_after_kill_s"] is not None]
        stalls.scatter(
            [at] * len(back),
            back,
            marker="^",
            color="grey",
            label="providers back on the new server" if i == 0 else None,
        )
        highest = max([highest, *values])
        if values:
            stalls.hlines(statistics.median(values), at - 0.12, at + 0.12, colors="black")
            stalls.annotate(
                f"resumed: median {statistics.median(values):.1f} s\n(replay {r['resumed']['replay_median_s']:.2f} s)",
                (at, max(values)),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize="small",
            )
        if r["ended"]:
            kills = r["ended"]["repeats"]
            ended = [k["ended_s"] for k in kills]
            stalls.scatter(
                [i + 0.15] * len(ended),
                ended,
                marker="s",
                color="C1",
                alpha=0.8,
                label="ended: failed, runner_lost (no server)",
            )
            stalls.scatter(
                [i + 0.15] * len(kills), [k["lease_out_after_kill_s"] for k in kills], marker="x", color="C3"
            )
            bound = (
                statistics.median(k["lease_out_after_kill_s"] for k in kills)
                + r["settings"]["ended_kill_RUNNER_RESUME_WITHIN_SECONDS"]
            )
            stalls.hlines(
                bound,
                i + 0.03,
                i + 0.27,
                colors="C1",
                linestyles=":",
                label=f"lease out + RUNNER_RESUME_WITHIN_SECONDS ({ENDED_RESUME_WITHIN})",
            )
            stalls.annotate(
                f"ended:\n{statistics.median(ended):.1f} s",
                (i + 0.15, max(ended)),
                textcoords="offset points",
                xytext=(8, -4),
                ha="left",
                va="center",
                fontsize="small",
            )
            highest = max([highest, *ended])
    stalls.axhline(LEASE, color="grey", linestyle="--", label=f"RUNNER_LEASE_SECONDS = {LEASE}")
    stalls.set_xticks(range(len(profiles)), list(profiles))
    stalls.set_xlim(-0.6, len(profiles) - 0.4)
    stalls.set_ylim(0, 2.1 * max(highest, LEASE))  # the legend above the points
    stalls.set_ylabel("s from SIGKILL of the job's server")
    stalls.set_title(f"The server dies after {KILL_AFTER} tokens: resumed, or ended", fontsize="medium")
    stalls.legend(fontsize="small", loc="upper left")
    fig.suptitle(f"The market, SmolLM2-135M q4 on 3 providers, {results['machine']['cpus']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def summary_line(results: dict[str, Any]) -> str:
    def one(name: str, r: dict[str, Any]) -> str:
        bids, speed, resumed, ended = r["bid_to_first_token"], r["speed"], r["resumed"], r["ended"]
        spreads = " / ".join(f"{speed[short]['max_over_min']:.2f}" if speed[short] else "n/a" for short, _, _ in SPEEDS)
        text = (
            f"{name}: bid→first token median {bids['median_s']:.2f} s (p90 {bids['p90_s']:.2f}), "
            f"paid/quote {bids['paid_over_quote_price_median']:.2f}; speed spread max/min claimed / benchmark / "
            f"observed {spreads}; resumed after kill: first new token median {resumed['stall_median_s']} s "
            f"(lease out {resumed['lease_out_median_s']} s, replay {resumed['replay_median_s']} s), "
            f"checks ok {resumed['ok']}"
        )
        if ended:
            text += f"; ended (no server) median {ended['ended_median_s']} s, checks ok {ended['ok']}"
        return text + f"; ledger ok {r['ledger_ok']}"

    return " | ".join(one(name, r) for name, r in results["profiles"].items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed bids per profile (after one warm-up job)")
    parser.add_argument("--stalls", type=int, default=5, help="server kills per profile, the job resumed")
    parser.add_argument("--ended", type=int, default=1, help="server kills on the redis profile, the job ended")
    parser.add_argument("--profiles", default="memory,redis")
    args = parser.parse_args()
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    started = time.time()
    profiles = {name: run_profile(name, args) for name in args.profiles.split(",")}
    results = {
        "benchmark": "market",
        "model": "SmolLM2-135M-Instruct q4, shards 0-10,10-20,20-30, 3 headless providers, 1 thread each",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {
            "RUNNER_LEASE_SECONDS": LEASE,
            "RUNNER_HEARTBEAT_SECONDS": HEARTBEAT,
            "RUNNER_RESUME_WITHIN_SECONDS": RESUME_WITHIN,
            "RUNNER_RESUME_WITHIN_SECONDS_ended_kill": ENDED_RESUME_WITHIN,
            "others": "defaults",
        },
        "command": " ".join(["bench/market.py", *sys.argv[1:]]),
        "rounds": args.rounds,
        "stalls": args.stalls,
        "ended": args.ended,
        "profiles": profiles,
        "seconds": round(time.time() - started, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "market.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "market.png")
    print(json.dumps(results, indent=2))
    print(summary_line(results))
    failed = [
        name
        for name, r in profiles.items()
        if not (r["ledger_ok"] and r["resumed"]["ok"] and (r["ended"] is None or r["ended"]["ok"]))
    ]
    if failed:
        sys.exit(f"{', '.join(failed)}: a resumed or ended job failed a check, or the ledger does not check out")


if __name__ == "__main__":
    main()
