"""Scaling of the auction's two solvers on realistic random books, and how close the greedy gets to CP-SAT.

Each size is cleared by the greedy (always, median of a few runs) and by CP-SAT with a time limit where its
model can be built in reasonable time; greedy / CP-SAT welfare is reported where CP-SAT ran, together
with greedy / CP-SAT's proved bound, which is a floor on greedy / optimum.

    .venv/bin/python bench/auction.py [--seeds 3] [--time-limit 10] [--sizes 100x20,500x50,...]

Prints a JSON document and a one-line summary; writes bench/results/auction.json and auction.png.

The books (see `random_book`): one model of 30 layers in 3 shards of 10 (SmolLM2-135M; the first and last
carry the embedding and head, so they need more memory); providers are 40 % browser tabs (1-2 slots,
0.5-2 GiB, about 3× slower) and 60 % headless agents (2-8 slots, 2-16 GiB); benchmarks are log-normal
around 0.7 ms per layer-token (bench/decode.py: 47 tokens/s for 30 layers on 2 cores); the platform's ask
grows with speed and reliability; jobs want 16-512 tokens and bid 1-3× the median ask per layer-token;
a fifth of them cap the pipeline's time per token. Priorities are 0, so the objective is the welfare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from market.auction import Allocation, Book, JobBid, ProviderOffer, ShardDemand, solve  # noqa: E402
from market.auction.cpsat import prune  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = "100x20,500x50,1000x100,3000x300,10000x1000"
TARGETS = {"greedy_seconds_at_largest": 1.0, "greedy_over_optimum": 0.95}
# CP-SAT runs up to this many (job shard, provider) pairs. 1,000 × 100 (300,000) already takes about 5 s to build
# and finds no solution in a 10 s search; 3,000 × 300 (2.7 million) would take a minute and gigabytes to build.
CPSAT_MAX_PAIRS = 300_000
LP_MAX_PAIRS = 300_000  # the LP bound takes ~2 s at 500 × 50 and ~17 s at 1,000 × 100
MIB = 1 << 20
MEDIAN_NS = 700_000  # ns per layer-token of a headless agent on 2 cores
BASE_ASK = 1_000_000  # base units per layer-token of a median agent with full reliability
SHARDS = (
    ShardDemand("smollm2-135m:0-10", 10, 270 * MIB),  # 10 layers + embedding + KV cache
    ShardDemand("smollm2-135m:10-20", 10, 160 * MIB),
    ShardDemand("smollm2-135m:20-30", 10, 270 * MIB),  # 10 layers + LM head + KV cache
)


def random_provider(rng: random.Random, j: int) -> ProviderOffer:
    browser = rng.random() < 0.4
    ns = max(1, int(rng.lognormvariate(0, 0.5) * MEDIAN_NS * (3 if browser else 1)))
    reliability = rng.uniform(0.9, 1.0)
    ask = max(1, int(BASE_ASK * (MEDIAN_NS / ns) ** 0.5 * reliability * rng.uniform(0.9, 1.1)))
    if browser:
        return ProviderOffer(f"p{j}", rng.randint(1, 2), rng.choice([512, 1024, 2048]) * MIB, ask, ns)
    return ProviderOffer(f"p{j}", rng.randint(2, 8), rng.choice([2, 4, 8, 16]) * 1024 * MIB, ask, ns)


def random_job(rng: random.Random, i: int, median_ask: float) -> JobBid:
    tokens = rng.randint(16, 512)
    bid = int(median_ask * rng.uniform(1.0, 3.0))  # per layer-token
    cap = int(30 * MEDIAN_NS * rng.uniform(1.0, 3.0)) if rng.random() < 0.2 else None
    return JobBid(f"j{i}", SHARDS, tokens, bid * 30 * tokens, max_ns_per_token=cap)


def random_book(n_jobs: int, n_providers: int, seed: int) -> Book:
    rng = random.Random(seed)
    providers = [random_provider(rng, j) for j in range(n_providers)]
    median_ask = statistics.median(p.ask for p in providers)
    return Book([random_job(rng, i, median_ask) for i in range(n_jobs)], providers)


def timed_greedy(book: Book, repeats: int) -> tuple[Allocation, float]:
    runs = [solve(book, solver="greedy") for _ in range(repeats)]
    return runs[-1], statistics.median(r.wall_time_s for r in runs)


def bench_size(n_jobs: int, n_providers: int, args: argparse.Namespace) -> dict[str, Any]:
    pairs = n_jobs * len(SHARDS) * n_providers  # Book.n_pairs
    greedy_runs, cpsat_runs = [], []
    floors: list[float] = []
    lp_bounds: list[float] = []
    for seed in range(args.seeds):
        book = random_book(n_jobs, n_providers, seed)
        greedy, seconds = timed_greedy(book, args.repeats)
        greedy_runs.append((greedy, seconds))
        bounds: list[float] = []
        if pairs <= CPSAT_MAX_PAIRS:
            exact = solve(book, solver="cpsat", time_limit_s=args.time_limit)
            cpsat_runs.append((greedy, exact))
            bounds += [exact.best_bound] if exact.best_bound else []
        if pairs <= LP_MAX_PAIRS:
            lp_bounds.append(lp_bound(book))
            bounds.append(lp_bounds[-1])
        if bounds:
            floors.append(greedy.welfare / min(bounds))
        print(f"{n_jobs}x{n_providers} seed {seed}: greedy {seconds:.3f} s", file=sys.stderr, flush=True)
    row: dict[str, Any] = {"jobs": n_jobs, "providers": n_providers, "shards": len(SHARDS), "pairs": pairs}
    row["greedy"] = {
        "seconds_median": round(statistics.median(s for _, s in greedy_runs), 4),
        "seconds_max": round(max(s for _, s in greedy_runs), 4),
        "winners_mean": round(statistics.mean(len(g.winners) for g, _ in greedy_runs), 1),
        "welfare": [g.welfare for g, _ in greedy_runs],
    }
    if cpsat_runs:
        row["cpsat"] = cpsat_summary([e for _, e in cpsat_runs])
        found = [(g, e) for g, e in cpsat_runs if e.status != "heuristic"]  # CP-SAT returned something in time
        row["greedy_over_cpsat"] = ratios([g.welfare / e.welfare for g, e in found if e.welfare > 0])
    else:
        row["cpsat"] = {"ran": False, "reason": f"not run: {pairs:,} (job shard, provider) pairs > {CPSAT_MAX_PAIRS:,}"}
    row["lp_bound"] = lp_bounds or None
    row["greedy_over_optimum_at_least"] = ratios(floors)  # greedy welfare / the tightest proved upper bound
    return row


def lp_bound(book: Book) -> float:
    """Upper bound on welfare: the linear relaxation of CP-SAT's model (GLOP, dual simplex)."""
    from ortools.linear_solver import pywraplp  # type: ignore[import-untyped]

    lp = pywraplp.Solver.CreateSolver("GLOP")
    lp.SetSolverSpecificParametersAsString("use_dual_simplex: true")
    inf, objective = lp.infinity(), lp.Objective()
    on_provider: dict[int, list[tuple[Any, int]]] = {}
    for i, per_shard in prune(book).items():
        job, x = book.jobs[i], lp.NumVar(0, 1, "")
        objective.SetCoefficient(x, job.max_price)
        speed = None
        if job.max_ns_per_token is not None:  # Σ ns · layers · y <= cap · x
            speed = lp.Constraint(-inf, 0)
            speed.SetCoefficient(x, -job.max_ns_per_token)
        distinct: dict[int, Any] = {}
        for shard, candidates in zip(job.shards, per_shard, strict=True):
            one = lp.Constraint(0, 0)  # Σ_j y = x
            one.SetCoefficient(x, -1)
            for j, cost in candidates:
                y = lp.NumVar(0, 1, "")
                one.SetCoefficient(y, 1)
                objective.SetCoefficient(y, -cost)
                if speed is not None:
                    speed.SetCoefficient(y, book.providers[j].ns_per_layer_token * shard.layers)
                if j not in distinct:  # Σ_k y_kj <= x
                    distinct[j] = lp.Constraint(-inf, 0)
                    distinct[j].SetCoefficient(x, -1)
                distinct[j].SetCoefficient(y, 1)
                on_provider.setdefault(j, []).append((y, shard.memory_bytes))
    for j, used in on_provider.items():
        slots, memory = (
            lp.Constraint(-inf, book.providers[j].slots),
            lp.Constraint(-inf, book.providers[j].memory_bytes),
        )
        for y, need in used:
            slots.SetCoefficient(y, 1)
            memory.SetCoefficient(y, need)
    objective.SetMaximization()
    if lp.Solve() != pywraplp.Solver.OPTIMAL:
        raise RuntimeError("the LP relaxation did not solve")
    return float(objective.Value())


def cpsat_summary(runs: list[Allocation]) -> dict[str, Any]:
    gaps = [r.optimality_gap for r in runs if r.optimality_gap is not None]
    return {
        "ran": True,
        "seconds_median": round(statistics.median(r.wall_time_s for r in runs), 3),
        "seconds_max": round(max(r.wall_time_s for r in runs), 3),
        "status": [r.status for r in runs],  # "heuristic": no CP-SAT solution in time, the greedy's was kept
        "gap_max": round(max(gaps), 4) if gaps else None,
        "welfare": [r.welfare for r in runs],
    }


def ratios(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": round(min(values), 4), "mean": round(statistics.mean(values), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="random books per size")
    parser.add_argument("--repeats", type=int, default=3, help="greedy runs per book (the median is kept)")
    parser.add_argument("--time-limit", type=float, default=10.0, help="CP-SAT's search limit, seconds")
    parser.add_argument("--sizes", default=SIZES, help="comma-separated JOBSxPROVIDERS")
    args = parser.parse_args()
    sizes = [tuple(int(n) for n in s.split("x")) for s in args.sizes.split(",")]
    rows = [bench_size(n_jobs, n_providers, args) for n_jobs, n_providers in sizes]
    report = build_report(rows, args)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "auction.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, RESULTS / "auction.png")
    print(json.dumps(report, indent=2))
    print(summary(report))


def build_report(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    largest = rows[-1]["greedy"]["seconds_max"]
    floors = [r["greedy_over_optimum_at_least"]["min"] for r in rows if r["greedy_over_optimum_at_least"]]
    return {
        "benchmark": "auction",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "book": "3 shards × 10 layers; see bench/auction.py's docstring",
        "seeds": args.seeds,
        "cpsat_time_limit_s": args.time_limit,
        "notes": (
            "Times are solve() wall time: the greedy includes pricing; CP-SAT also includes the greedy it starts "
            "from and building the model. greedy_over_optimum_at_least is greedy welfare over the tightest proved "
            "upper bound (CP-SAT's bound, or the LP relaxation's), so greedy reaches at least that share of the "
            "optimum."
        ),
        "sizes": rows,
        "targets": TARGETS,
        "met": {
            "greedy_seconds_at_largest": largest <= TARGETS["greedy_seconds_at_largest"],
            "greedy_over_optimum": bool(floors) and min(floors) >= TARGETS["greedy_over_optimum"],
        },
    }


def summary(report: dict[str, Any]) -> str:
    parts = []
    for r in report["sizes"]:
        text = f"{r['jobs']}x{r['providers']}: greedy {r['greedy']['seconds_max']:.3f} s"
        c, ratio = r["cpsat"], r.get("greedy_over_cpsat")
        if not c["ran"]:
            text += ", cpsat skipped (too big)"
        elif ratio is None:
            text += f", cpsat {c['seconds_median']:.1f} s found nothing"
        else:
            gap = "" if c["gap_max"] is None else f", gap ≤ {c['gap_max']:.3f}"
            text += f", cpsat {c['seconds_median']:.1f} s ({'/'.join(sorted(set(c['status'])))}{gap})"
            text += f", greedy/cpsat min {ratio['min']:.3f} mean {ratio['mean']:.3f}"
        if r["greedy_over_optimum_at_least"]:
            text += f", greedy ≥ {r['greedy_over_optimum_at_least']['min']:.3f} of optimum (proved)"
        parts.append(text)
    met = report["met"]
    return (
        "auction (greedy: max time over seeds; cpsat: median time): "
        + " | ".join(parts)
        + f" | targets: greedy ≤ 1 s at largest {'met' if met['greedy_seconds_at_largest'] else 'MISSED'},"
        + f" ≥ 0.95 of optimum {'met' if met['greedy_over_optimum'] else 'MISSED'}"
    )


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["sizes"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    pairs = [r["pairs"] for r in rows]
    left.loglog(pairs, [r["greedy"]["seconds_median"] for r in rows], "o-", label="greedy", color="#4c72b0")
    ran = [r for r in rows if r["cpsat"]["ran"]]
    left.loglog(
        [r["pairs"] for r in ran], [r["cpsat"]["seconds_median"] for r in ran], "s-", label="CP-SAT", color="#c44e52"
    )
    left.axhline(TARGETS["greedy_seconds_at_largest"], ls="--", color="grey", lw=0.8, label="greedy target 1 s")
    left.axhline(report["cpsat_time_limit_s"], ls=":", color="#c44e52", lw=0.8, label="CP-SAT search limit")
    for r in rows:
        left.annotate(f"{r['jobs']}×{r['providers']}", (r["pairs"], r["greedy"]["seconds_median"]), fontsize=7)
    left.set_xlabel("(job shard, provider) pairs")
    left.set_ylabel("solve() wall time, s (median over seeds)")
    left.set_title("Time per round")
    left.legend(fontsize=8)
    rated = [r for r in rows if r.get("greedy_over_cpsat") or r["greedy_over_optimum_at_least"]]
    xs = list(range(len(rated)))

    def series(key: str, stat: str) -> list[float]:
        return [r[key][stat] if r.get(key) else float("nan") for r in rated]

    right.plot(xs, series("greedy_over_cpsat", "mean"), "o-", label="greedy / CP-SAT's best (mean)")
    right.plot(xs, series("greedy_over_cpsat", "min"), "v--", label="greedy / CP-SAT's best (min)")
    right.plot(xs, series("greedy_over_optimum_at_least", "min"), "x:", label="greedy / tightest proved bound (min)")
    right.axhline(TARGETS["greedy_over_optimum"], ls="--", color="grey", lw=0.8, label="target 0.95")
    right.set_xticks(xs, [f"{r['jobs']}×{r['providers']}" for r in rated])
    right.set_ylim(0.9, 1.005)
    right.set_ylabel("welfare ratio")
    right.set_title("Greedy welfare against CP-SAT and the bounds")
    right.legend(fontsize=8)
    fig.suptitle(f"Auction, 3 shards × 10 layers, {report['seeds']} books per size, {report['machine']['cpus']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
