"""The honest market's figures: what a buyer waits for, how far the market's own measure of speed spreads across
identical providers, and how long a job stalls when the server running it dies.

Starts a whole market per profile, each with three headless provider processes (one thread each) serving the real
model (SmolLM2-135M q4, shards 0-10,10-20,20-30), with RUNNER_LEASE_SECONDS=5 and RUNNER_HEARTBEAT_SECONDS=1 and
every other setting at its default (rounds every AUCTION_EVERY_SECONDS = 2 s, AUCTION_IDLE_SECONDS = 30 s):
  - memory: the embedded profile: Daphne keeps the market's clock, the in-memory channel layer, SQLite (temp dir);
  - redis:  the full profile: Daphne, a Celery worker and beat, the Redis channel layer (db 3, flushed),
            PostgreSQL (database bench_market, dropped and created).

1. Bid to first token: GET /api/quote/, then POST /api/jobs/ with max_price = the quote's `bid`, timed until the
   first `token` event of the job's stream (max_new_tokens 8); median and p90 over --rounds jobs after one warm-up
   job. Beside it, the quote's price (the asks for prompt + max_new_tokens tokens) against what the job paid
   (GET /api/jobs/<id>/cost/).
2. Spread of speed across the three identical providers: their benchmark (ns_per_layer_token, as the server timed
   their challenge: what the market prices by before it has timed SPEED_MIN_SAMPLES = 20 decode steps) against the
   market's observed speed after the jobs of 1. (observed_ns_per_layer_token), as max/min and coefficient of
   variation (population stdev / mean).
3. Stall after the runner's server dies: a job of max_new_tokens 200; SIGKILL of Daphne after its third token
   reached the buyer. memory: the server restarts at once (start_server()) and the API is polled every 0.1 s;
   redis: worker and beat keep running, PostgreSQL is polled directly every 0.1 s while no server runs, then Daphne
   alone restarts (start_server(workers=False)). Timed from the kill to the job being `failed` with `runner_lost`;
   checked: every cost line's until_step <= the tokens delivered, paid = the lines' payments, refunded = escrowed -
   paid, the reopened stream ends with runner_lost; `manage.py ledger_check` passes at the end.

    .venv/bin/python bench/market.py [--rounds 5] [--stalls 5] [--profiles memory,redis]

Defaults: 5 timed bids and 5 kills per profile, both profiles: about 5.5 minutes on a 2-core machine (a memory kill
costs ~40 s, see below). Prints JSON and a one-line summary; writes bench/results/market.json and market.png. Each
profile's logs and database stay in a temp dir (named in the JSON); the providers' shard caches are removed.

Reading the figures: the stall is split into the lease (`lease_out_after_kill_s`: the last renewal + the lease,
from the kill) and the wait for the round that ends the job (`round_after_lease_out_s`). The observed speed is the
time from the previous hop's output to the provider's own, per layer: it includes the relay and the hop's fixed
work (the first shard embeds, the last one holds the LM head), so it is not a provider's compute alone.
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
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.exceptions import ConnectionClosed  # noqa: E402

from market.localstack import LocalMarket  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PG = "postgres://postgres@127.0.0.1:5432"
DATABASE = "bench_market"
REDIS_URL = "redis://127.0.0.1:6379/3"
MODEL = {"model": "smollm2-135m", "quant": "q4"}
SHORT_PROMPT, SHORT_TOKENS = "Name three colours.", 8
LONG_PROMPT, LONG_TOKENS = "Write a long story about a dragon who learns to read.", 200
LEASE, HEARTBEAT = 5, 1  # seconds: RUNNER_LEASE_SECONDS and RUNNER_HEARTBEAT_SECONDS of these markets
KILL_AFTER = 3  # tokens the buyer has received when the server is killed
PROVIDERS = 3
SPEED_KEYS = ("ns_per_layer_token", "observed_ns_per_layer_token")


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
        stalls = []
        for index in range(args.stalls):
            stalls.append(stall_once(name, market, buyer, provider))
            log(f"{name}: stall {index + 1}/{args.stalls}: {stalls[-1]['stall_s']:.2f} s")
        ledger = market.manage("ledger_check")
    for cache in [work / "media", *(work / "logs").glob("cache-*")]:  # shard files: ~0.5 GB per provider
        shutil.rmtree(cache, ignore_errors=True)
    return {
        "services": services_info(name),
        "bid_to_first_token": summarise_bids(bids),
        "speed": speeds,
        "stall": summarise_stalls(stalls),
        "ledger_check": ledger.splitlines()[0] if ledger else "",
        "ledger_ok": ledger.startswith("ledger ok"),
        "logs": str(work / "logs"),
    }


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
    keys = ("ns_per_layer_token", "observed_ns_per_layer_token", "observed_steps", "ask", "reliability_permille")
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


def spread(values: list[float]) -> dict[str, float]:
    return {
        "max_over_min": round(max(values) / min(values), 4),
        "cv": round(statistics.pstdev(values) / statistics.mean(values), 4),
    }


def speed_spread(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]], bids: list[dict[str, Any]]
) -> dict[str, Any]:
    names = sorted(after)
    claimed = [float(before[n]["ns_per_layer_token"]) for n in names]
    observed = [float(after[n]["observed_ns_per_layer_token"] or "nan") for n in names]
    served = {n: sorted({b["served"].get(n, "") for b in bids} - {""}) for n in names}
    return {
        "providers": {
            n: {"shards_served": served[n], "asks_before": before[n]["ask"]} | after[n] for n in sorted(after)
        },
        "benchmark": spread(claimed),
        "observed": spread(observed),
    }


def stall_once(name: str, market: LocalMarket, buyer: str, provider: str) -> dict[str, Any]:
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
    restarted = time.time()
    if name == "redis":  # Celery's rounds end the job while no server runs
        ended = poll(lambda: sql_state(market, job["id"]), 60)
        market.start_server(workers=False)
        back = time.time()
    else:  # the embedded market's rounds run in its server: bring it back on the same database
        market.start_server()
        back = time.time()
        ended = poll(lambda: market.api("GET", f"/api/jobs/{job['id']}/", token=buyer)[1]["state"], 120)
    done = market.api("GET", f"/api/jobs/{job['id']}/", token=buyer)[1]
    finished = datetime.fromisoformat(done["finished_at"]).timestamp()
    lease_out = runner_seen_at(market, job["id"]) + LEASE  # the first moment a round may end the job
    result = {
        "job": job["id"],
        "stall_s": round(ended - killed[0], 3),
        "stall_by_finished_at_s": round(finished - killed[1], 3),
        "lease_out_after_kill_s": round(lease_out - killed[1], 3),
        "round_after_lease_out_s": round(finished - lease_out, 3),
        "server_back_after_kill_s": round(back - killed[1], 3),
        "error_code": done["error_code"],
        "streamed_before_kill": len(streamed),
    } | paid_for_delivered(market, buyer, done, streamed)
    wait_fresh(market, provider, since=restarted, timeout=120)  # the next stall needs all three back
    return result


def poll(state: Callable[[], str], timeout: float) -> float:
    """The monotonic time at which `state()` first reads failed, polled every 0.1 s."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if state() == "failed":
            return time.monotonic()
        time.sleep(0.1)
    raise TimeoutError(f"the job was not failed within {timeout} s")


def sql_state(market: LocalMarket, job_id: int) -> str:
    import psycopg

    with psycopg.connect(market.env["DATABASE_URL"]) as conn:
        row = conn.execute("SELECT state FROM market_job WHERE id = %s", [job_id]).fetchone()
    return str(row[0]) if row else ""


def runner_seen_at(market: LocalMarket, job_id: int) -> float:
    """The job's last lease renewal (the API does not show it), read from the market's database."""
    url, query = market.env["DATABASE_URL"], "SELECT runner_seen_at FROM market_job WHERE id = "
    if url.startswith("sqlite:///"):
        import sqlite3

        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
            seen: Any = db.execute(query + "?", [job_id]).fetchone()[0]
        # Django stores naive UTC text in SQLite
        return datetime.fromisoformat(seen).replace(tzinfo=UTC).timestamp()
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(query + "%s", [job_id]).fetchone()
    assert row is not None
    return float(row[0].timestamp())


def paid_for_delivered(market: LocalMarket, buyer: str, done: dict[str, Any], streamed: list[int]) -> dict[str, Any]:
    cost = job_cost(market, buyer, done["id"])
    delivered = len(done["tokens"])
    reopened = market.stream(done["id"], buyer, timeout=30)
    return {
        "delivered": delivered,
        "until_steps": [line["until_step"] for line in cost["lines"]],
        "escrowed": cost["escrowed"],
        "paid": cost["paid"],
        "refunded": cost["refunded"],
        "paid_for_delivered": bool(cost["lines"])
        and all(line["until_step"] <= delivered for line in cost["lines"])
        and cost["paid"] == sum(line["payment"] for line in cost["lines"]) > 0
        and cost["refunded"] == cost["escrowed"] - cost["paid"]
        and done["tokens"][: len(streamed)] == streamed,
        "reopened_stream_ends_runner_lost": reopened[0]["tokens"] == done["tokens"]
        and (reopened[-1]["type"], reopened[-1].get("error_code")) == ("done", "runner_lost"),
    }


def p90(values: list[float]) -> float:
    return values[0] if len(values) < 2 else statistics.quantiles(values, n=10, method="inclusive")[-1]


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


def summarise_stalls(stalls: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "median_s": round(statistics.median(s["stall_s"] for s in stalls), 3),
        "max_s": round(max(s["stall_s"] for s in stalls), 3),
        "all_runner_lost": all(s["error_code"] == "runner_lost" for s in stalls),
        "all_paid_for_delivered": all(s["paid_for_delivered"] for s in stalls),
        "all_streams_ended": all(s["reopened_stream_ends_runner_lost"] for s in stalls),
        "repeats": stalls,
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
    fig, (waits, speeds, stalls) = plt.subplots(1, 3, figsize=(16, 4.6))
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
    waits.set_ylim(0, 1.4 * max(r["bid_to_first_token"]["p90_s"] for r in profiles.values()))
    waits.set_ylabel("s from POST /api/jobs/ to the first token")
    waits.set_title(f"Bid at the quote to first token ({SHORT_TOKENS}-token jobs)")
    width = 0.4
    top = max(row[k] or 0 for r in profiles.values() for row in r["speed"]["providers"].values() for k in SPEED_KEYS)
    for i, (name, r) in enumerate(profiles.items()):
        rows = list(r["speed"]["providers"].values())
        for k, (key, label) in enumerate(zip(SPEED_KEYS, ("own benchmark", "observed"), strict=True)):
            x = [i * 4 + p + (k - 0.5) * width for p in range(len(rows))]
            heights = [(row[key] or 0) / 1e6 for row in rows]
            speeds.bar(x, heights, width, color=f"C{k}", label=label if i == 0 else None)
        s = r["speed"]
        speeds.annotate(
            f"{name}\nmax/min {s['benchmark']['max_over_min']:.2f} → {s['observed']['max_over_min']:.2f}\n"
            f"CV {s['benchmark']['cv']:.2f} → {s['observed']['cv']:.2f}",
            (i * 4 + 1, 1.05 * top / 1e6),
            ha="center",
            fontsize="small",
        )
    ticks = [
        (i * 4 + p, name) for i, r in enumerate(profiles.values()) for p, name in enumerate(r["speed"]["providers"])
    ]
    speeds.set_xticks([t[0] for t in ticks], [t[1] for t in ticks], fontsize="small")
    speeds.set_ylim(0, 1.45 * top / 1e6)
    speeds.set_ylabel("ms per layer-token")
    speeds.set_title("Three identical providers: claimed vs observed speed")
    speeds.legend(fontsize="small", loc="upper right")
    for i, r in enumerate(profiles.values()):
        values = [s["stall_s"] for s in r["stall"]["repeats"]]
        lease_out = [s["lease_out_after_kill_s"] for s in r["stall"]["repeats"]]
        stalls.scatter(
            [i] * len(values), values, alpha=0.6, color="C0", label="failed, runner_lost" if i == 0 else None
        )
        stalls.scatter(
            [i] * len(lease_out), lease_out, marker="x", color="C3", label="lease ran out" if i == 0 else None
        )
        stalls.hlines(r["stall"]["median_s"], i - 0.25, i + 0.25, colors="black")
        stalls.annotate(
            f"median {r['stall']['median_s']:.1f} s",
            (i, max(values)),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize="small",
        )
    stalls.axhline(LEASE, color="grey", linestyle="--", label=f"RUNNER_LEASE_SECONDS = {LEASE}")
    stalls.set_xticks(range(len(profiles)), list(profiles))
    stalls.set_xlim(-0.6, len(profiles) - 0.4)
    stalls.set_ylim(0, 1.3 * max(r["stall"]["max_s"] for r in profiles.values()))
    stalls.set_ylabel("s from SIGKILL to failed / runner_lost")
    stalls.set_title("Stall after the runner's server dies")
    stalls.legend(fontsize="small")
    fig.suptitle(f"The market, SmolLM2-135M q4 on 3 providers, {results['machine']['cpus']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def summary_line(results: dict[str, Any]) -> str:
    def one(name: str, r: dict[str, Any]) -> str:
        bids, speed, stall = r["bid_to_first_token"], r["speed"], r["stall"]
        return (
            f"{name}: bid→first token median {bids['median_s']:.2f} s (p90 {bids['p90_s']:.2f}), "
            f"paid/quote {bids['paid_over_quote_price_median']:.2f}; speed spread max/min "
            f"{speed['benchmark']['max_over_min']:.2f} claimed vs {speed['observed']['max_over_min']:.2f} observed; "
            f"stall after kill median {stall['median_s']:.1f} s (lease {LEASE} s), "
            f"paid for delivered {stall['all_paid_for_delivered']}, ledger ok {r['ledger_ok']}"
        )

    return " | ".join(one(name, r) for name, r in results["profiles"].items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed bids per profile (after one warm-up job)")
    parser.add_argument("--stalls", type=int, default=5, help="server kills per profile")
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
        "settings": {"RUNNER_LEASE_SECONDS": LEASE, "RUNNER_HEARTBEAT_SECONDS": HEARTBEAT, "others": "defaults"},
        "rounds": args.rounds,
        "stalls": args.stalls,
        "profiles": profiles,
        "seconds": round(time.time() - started, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "market.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "market.png")
    print(json.dumps(results, indent=2))
    print(summary_line(results))
    if not all(r["ledger_ok"] and r["stall"]["all_paid_for_delivered"] for r in profiles.values()):
        sys.exit("a stalled job was not paid for exactly what it delivered, or the ledger does not check out")


if __name__ == "__main__":
    main()
