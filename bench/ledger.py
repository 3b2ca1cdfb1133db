"""Settlement throughput of the ledger on PostgreSQL: N concurrent writers against one, side by side.

Each writer is a process with its own database connection. A round escrows `--jobs` fresh jobs (random buyers),
then settles them (three random providers each, a platform fee, the rest refunded), first with one writer, then
with `--writers`, each phase timed from a common start barrier to the last writer's end. The figure is the median
over the rounds; the ratio N/1 is taken within a round. At the end every pending earning is released and the
ledger is checked: the sum of all balances minus what was minted (the drift) must be 0.

    .venv/bin/python bench/ledger.py [--jobs 2000] [--writers 8] [--rounds 3] [--database-url postgres://...]

Runs in its own database (`bench_ledger`, made and migrated by Django's test-database machinery, dropped at the
end unless --keep-db). Prints a JSON document and a one-line summary; writes bench/results/ledger.json and
ledger.png.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/postgres"
SHARDS = 3  # providers per job, one per shard
ESCROW = 10_000  # base units per job: the buyer's maximum price
FEE_BPS = 500  # the platform's fee, 5 % of what the providers earn

EscrowTask = tuple[int, str]  # buyer id, job ref
SettleTask = tuple[int, str, list[tuple[int, int]], int]  # buyer id, job ref, [(provider id, amount)], fee


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000, help="jobs settled per phase")
    parser.add_argument("--writers", type=int, default=8, help="concurrent writers (processes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--buyers", type=int, default=64)
    parser.add_argument("--providers", type=int, default=24, help="fewer providers: more contention on their rows")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL") or DEFAULT_URL)
    parser.add_argument("--db-name", default="bench_ledger", help="the database the benchmark creates and uses")
    parser.add_argument("--keep-db", action="store_true", help="leave the benchmark database in place")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="ledger", help="results go to bench/results/<name>.json and .png")
    return parser.parse_args()


def setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.db import connection

    if connection.vendor != "postgresql":
        raise SystemExit(f"bench/ledger.py needs PostgreSQL; {database_url!r} is {connection.vendor}")


# --- work done inside a writer process ------------------------------------------------------------------------------


def _writer(kind: str, tasks: Sequence[Any], start: Barrier, out: Any) -> None:
    """One writer: fetch its users, wait for the others, run its share, report (start, end, done, errors)."""
    from django.contrib.auth.models import User
    from django.db import connection

    ids = {t[0] for t in tasks} | ({p for t in tasks for p, _ in t[2]} if kind == "settle" else set())
    users = User.objects.in_bulk(list(ids))
    run = _escrow_one if kind == "escrow" else _settle_one
    errors: list[str] = []
    start.wait()
    began = time.monotonic()
    for task in tasks:
        try:
            run(users, task)
        except Exception as error:  # noqa: BLE001 - counted and reported, the run goes on
            errors.append(f"{type(error).__name__}: {error}")
    out.put((began, time.monotonic(), len(tasks) - len(errors), errors[:5]))
    connection.close()


def _escrow_one(users: dict[int, Any], task: EscrowTask) -> None:
    from ledger import services

    buyer, job_ref = task
    services.escrow_for_job(user=users[buyer], amount=ESCROW, job_ref=job_ref)


def _settle_one(users: dict[int, Any], task: SettleTask) -> None:
    from ledger import services

    buyer, job_ref, payouts, fee = task
    services.settle_job(job_ref=job_ref, buyer=users[buyer], payouts=[(users[p], a) for p, a in payouts], fee=fee)


def run_phase(kind: str, tasks: Sequence[Any], writers: int) -> dict[str, Any]:
    """Run `tasks` with `writers` processes (forked, each opening its own connection); ops/s over the wall time."""
    from django.db import connections

    connections.close_all()  # a forked child must not share the parent's socket
    ctx = mp.get_context("fork")
    start, out = ctx.Barrier(writers), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(kind, tasks[w::writers], start, out)) for w in range(writers)]
    for proc in procs:
        proc.start()
    reports = [out.get(timeout=3600) for _ in procs]
    for proc in procs:
        proc.join()
    wall = max(r[1] for r in reports) - min(r[0] for r in reports)
    done = sum(r[2] for r in reports)
    errors = [e for r in reports for e in r[3]]
    failed = len(tasks) - done
    return {"seconds": round(wall, 3), "done": done, "failed": failed, "per_s": round(done / wall, 1), "errors": errors}


# --- the benchmark --------------------------------------------------------------------------------------------------


def make_users(n_buyers: int, n_providers: int) -> tuple[list[int], list[int]]:
    """Buyers (funded for every job they could be given) and providers (with nothing)."""
    from django.contrib.auth.models import User

    from ledger import services

    buyers = [User.objects.create_user(username=f"buyer{i}").pk for i in range(n_buyers)]
    providers = [User.objects.create_user(username=f"provider{i}").pk for i in range(n_providers)]
    for pk in buyers:
        services.mint_as_system(to_user=User.objects.get(pk=pk), amount=10**12, key=f"bench-funds:{pk}")
    return buyers, providers


def make_jobs(prefix: str, n: int, buyers: list[int], providers: list[int], rng: random.Random) -> list[SettleTask]:
    jobs: list[SettleTask] = []
    for i in range(n):
        payouts = [(p, rng.randint(500, 2_500)) for p in rng.sample(providers, SHARDS)]
        fee = sum(a for _, a in payouts) * FEE_BPS // 10_000
        jobs.append((rng.choice(buyers), f"{prefix}-{i}", payouts, fee))
    return jobs


def measure(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    buyers, providers = make_users(args.buyers, args.providers)
    counts = sorted({1, args.writers})
    samples: dict[int, dict[str, list[dict[str, Any]]]] = {w: {"escrow": [], "settle": []} for w in counts}
    for round_ in range(1, args.rounds + 1):
        for writers in counts:
            jobs = make_jobs(f"r{round_}w{writers}", args.jobs, buyers, providers, rng)
            samples[writers]["escrow"].append(run_phase("escrow", [(b, ref) for b, ref, _, _ in jobs], writers))
            samples[writers]["settle"].append(run_phase("settle", jobs, writers))
            last = samples[writers]["settle"][-1]
            print(f"round {round_}/{args.rounds}, {writers} writer(s): {last['per_s']} settlements/s", file=sys.stderr)
    return report(args, samples, release_everything())


def release_everything() -> dict[str, Any]:
    """Release every pending earning (as the periodic task would once the windows close), timed, one writer."""
    from django.utils import timezone

    from ledger import services

    began = time.monotonic()
    total = 0
    while released := services.release_due_earnings(now=timezone.now() + timedelta(days=365), limit=10_000):
        total += released
    seconds = time.monotonic() - began
    return {"released": total, "seconds": round(seconds, 3), "per_s": round(total / seconds, 1) if total else 0}


def report(args: argparse.Namespace, samples: dict[int, Any], release: dict[str, Any]) -> dict[str, Any]:
    from ledger.models import Transaction
    from ledger.selectors import ledger_drift

    drift = ledger_drift()
    n = args.writers

    def median(writers: int, kind: str) -> float:
        return round(float(statistics.median(s["per_s"] for s in samples[writers][kind])), 1)

    ratios = [a["per_s"] / b["per_s"] for a, b in zip(samples[n]["settle"], samples[1]["settle"], strict=True)]
    return {
        "benchmark": "ledger",
        "database": f"PostgreSQL {_server_version()}",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "jobs_per_phase": args.jobs,
        "writers": n,
        "rounds": args.rounds,
        "shape": {"buyers": args.buyers, "providers": args.providers, "providers_per_job": SHARDS, "fee_bps": FEE_BPS},
        "settlements_per_s_median": {str(w): median(w, "settle") for w in samples},
        "escrows_per_s_median": {str(w): median(w, "escrow") for w in samples},
        f"settle_speedup_{n}_over_1": round(statistics.median(ratios), 2) if n != 1 else 1.0,
        "phases": {str(w): phases for w, phases in samples.items()},
        "release": release,
        "ledger": {
            "transactions": Transaction.objects.count(),
            "minted": drift.minted,
            "sum_of_balances": drift.held,
            "drift": drift.drift,
            "mismatched_accounts": len(drift.mismatches),
            "unbalanced_transactions": len(drift.unbalanced),
            "ok": drift.ok,
        },
    }


def _server_version() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        return str(cursor.fetchone()[0]).split()[0]


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, kind, title in ((axes[0], "settle", "Settlements"), (axes[1], "escrow", "Escrows")):
        writers = list(result["phases"])
        medians = [statistics.median(p["per_s"] for p in result["phases"][w][kind]) for w in writers]
        axis.bar([f"{w} writer(s)" for w in writers], medians, color=["#4c72b0", "#55a868"][: len(writers)])
        for i, w in enumerate(writers):  # every round as a dot over the median bar
            axis.scatter([i] * len(result["phases"][w][kind]), [p["per_s"] for p in result["phases"][w][kind]], c="k")
        axis.set_ylabel(f"{title.lower()} per second")
        axis.set_title(f"{title} ({result['jobs_per_phase']} jobs per round)")
    ledger = result["ledger"]
    fig.suptitle(
        f"Ledger on {result['database']}, {result['machine']['cpus']} cores, {result['rounds']} rounds; "
        f"drift {ledger['drift']} ({ledger['transactions']} transactions)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def with_database(args: argparse.Namespace, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Create (or re-create) and migrate the benchmark's database, run `body` in it, drop it unless --keep-db."""
    from django.db import connection

    connection.settings_dict["TEST"]["NAME"] = args.db_name
    original = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        return body()
    finally:
        if not args.keep_db:
            connection.creation.destroy_test_db(original, verbosity=0)


def main() -> None:
    args = parse_args()
    setup_django(args.database_url)
    result = with_database(args, lambda: measure(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / f"{args.name}.png")
    print(json.dumps(result, indent=2))
    n, med = result["writers"], result["settlements_per_s_median"]
    print(
        f"ledger settlements/s (median of {result['rounds']}, {result['jobs_per_phase']} jobs): "
        f"{n} writers {med[str(n)]}, 1 writer {med['1']} (x{result[f'settle_speedup_{n}_over_1']}) | "
        f"escrows/s {n} writers {result['escrows_per_s_median'][str(n)]} | "
        f"drift {result['ledger']['drift']} ({'ok' if result['ledger']['ok'] else 'LEDGER CHECK FAILED'})"
    )
    failed = sum(p["failed"] for phases in result["phases"].values() for kind in phases.values() for p in kind)
    if failed or not result["ledger"]["ok"]:
        sys.exit(f"{failed} operations failed; ledger ok: {result['ledger']['ok']}")


if __name__ == "__main__":
    main()
