"""Decode speed of the real model served by three providers over loopback, against the whole model in one process.

Starts a whole market twice, each with three headless provider processes (one shard each, q4):
  - redis:  Daphne running the orchestrator next to the first provider, a Celery worker and beat clearing the
            market, the Redis channel layer, PostgreSQL;
  - memory: Daphne running the orchestrator on its own loop, the in-memory channel layer, SQLite.
In each round the same greedy generation runs on the whole model (one ONNX graph, in this process, same thread
count) right before and right after a job goes through the pipeline, and the pipeline is compared with the mean
of the two, so the drift of the shared machine's speed hits both alike. Reported: decode
tokens/s of both and their ratio (median over rounds), the median round trip of each hop as the orchestrator saw
it, and the overhead per hop = (pipeline ms per token - whole-model ms per token) / hops.

    .venv/bin/python bench/pipeline.py [--rounds 5] [--tokens 64] [--threads 1] [--profiles redis,memory]
                                       [--fast-path on,off]

Each profile runs with the relay's fast path on (transport/accelerator.py; its results under the profile's
name) and off (RELAY_FAST_PATH=off in every process: Daphne and websockets as they ship; under "<name>-plain").

Prints JSON and a one-line summary; writes bench/results/pipeline.json and pipeline.png. Target: ratio >= 0.90.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.config import ShardSpec  # noqa: E402
from inference.generate import LocalChain, SamplingParams, generate  # noqa: E402
from inference.gguf_model import GGUFModel, smollm2_path  # noqa: E402
from inference.runtime import ShardRuntime, configure_threads  # noqa: E402
from inference.shard_builder import build_shard  # noqa: E402
from inference.tokenizer import ChatTokenizer  # noqa: E402
from market.localstack import LocalMarket  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "Write a long story about a dragon who learns to read."
TARGET = 0.90
HOPS = 3


def profile_env(name: str, work: Path) -> dict[str, str]:
    env = {"MEDIA_ROOT": str(work / "media"), "LOG_LEVEL": "WARNING", "SIGNUP_GRANT": str(10**12)}
    if name == "redis":
        import psycopg
        import redis

        with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS cm_bench WITH (FORCE)")
            conn.execute("CREATE DATABASE cm_bench")
        redis.Redis.from_url("redis://127.0.0.1:6379/6").flushdb()
        env |= {"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/cm_bench", "REDIS_URL": "redis://127.0.0.1:6379/6"}
    else:
        env |= {"DATABASE_URL": f"sqlite:///{work / 'bench.sqlite3'}"}
    return env


def whole_model(threads: int) -> tuple[LocalChain, list[int], frozenset[int]]:
    configure_threads(threads)
    model = GGUFModel(smollm2_path())
    spec = ShardSpec("smollm2-135m", "q4", 0, model.config.n_layers, model.config.n_layers)
    tokenizer = ChatTokenizer.from_gguf(model)
    prompt = tokenizer.encode_chat([{"role": "user", "content": PROMPT}])
    return LocalChain([ShardRuntime(build_shard(model, spec).SerializeToString())]), prompt, tokenizer.stop_ids


def run_profile(
    name: str,
    args: argparse.Namespace,
    whole: tuple[LocalChain, list[int], frozenset[int]],
    *,
    commitments: bool = True,
    fast_path: str = "on",
) -> dict[str, Any]:
    """The profile's market with three providers (committing to their layers' states, or not: bench/verification.py
    compares both), `args.rounds` jobs each bracketed by the whole model."""
    chain, prompt, stops = whole
    work = Path(tempfile.mkdtemp(prefix=f"bench-pipeline-{name}-"))
    env = profile_env(name, work) | {"INFERENCE_THREADS": str(args.threads), "RELAY_FAST_PATH": fast_path}
    with LocalMarket(env=env, logs=work / "logs") as market:
        market.manage("migrate", "--noinput", "-v0")
        market.manage("import_model", "smollm2-135m", "--plan", "0-10,10-20,20-30", "--quant", "q4")
        buyer = market.manage("issue_token", "bench-buyer", "--create")
        provider = market.manage("issue_token", "bench-provider", "--create")
        market.start_server()
        for index in range(HOPS):
            market.start_provider(f"bench-{index}", token=provider, threads=args.threads, commitments=commitments)
        market.wait_providers(HOPS, provider, timeout=300)
        rounds = []
        for round_index in range(args.rounds + 1):  # round 0 warms up: shard downloads, first session loads
            # The whole model runs right before and right after the job, and the pipeline is compared with the mean
            # of the two: the machine's speed drifts within seconds here, and bracketing follows it.
            before = generate(chain, prompt, max_new_tokens=args.tokens, stop_ids=stops, sampling=SamplingParams())
            job = market.submit(buyer, model="smollm2-135m", prompt=PROMPT, max_new_tokens=args.tokens)
            market.stream(job["id"], buyer)
            done = market.api("GET", f"/api/jobs/{job['id']}/", token=buyer)[1]
            after = generate(chain, prompt, max_new_tokens=args.tokens, stop_ids=stops, sampling=SamplingParams())
            if done["state"] != "done":
                raise RuntimeError(f"job {job['id']} {done['state']}: {done['error']}")
            if round_index:
                rounds.append(measure(done, before, after))
            print(f"{name}: round {round_index}/{args.rounds} done", file=sys.stderr, flush=True)
    return summarise(rounds)


def measure(job: dict[str, Any], before: Any, after: Any) -> dict[str, Any]:
    timings = job["timings"]
    pipeline_ms = 1000 * timings["decode_s"] / timings["decode_steps"]
    whole_ms = 500 * (before.decode_seconds / before.decode_steps + after.decode_seconds / after.decode_steps)
    return {
        "pipeline_tokens_per_s": 1000 / pipeline_ms,
        "whole_tokens_per_s": 1000 / whole_ms,
        "ratio": whole_ms / pipeline_ms,
        "overhead_per_hop_ms": (pipeline_ms - whole_ms) / HOPS,
        "hop_round_trip_ms": timings["hop_round_trip_ms_median"],
        "same_tokens": job["tokens"] == before.tokens == after.tokens,
    }


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def median(key: str) -> float:
        return round(float(statistics.median(r[key] for r in rounds)), 3)

    return {
        "pipeline_tokens_per_s_median": median("pipeline_tokens_per_s"),
        "whole_tokens_per_s_median": median("whole_tokens_per_s"),
        "ratio_median": median("ratio"),
        "overhead_per_hop_ms_median": median("overhead_per_hop_ms"),
        "hop_round_trip_ms_median": [
            round(statistics.median(r["hop_round_trip_ms"][h] for r in rounds), 3) for h in range(HOPS)
        ],
        "same_tokens_every_round": all(r["same_tokens"] for r in rounds),
        "rounds": rounds,
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = list(results["profiles"])
    fig, (left, right, rounds) = plt.subplots(1, 3, figsize=(15, 4))
    width = 0.38
    for offset, (key, label) in enumerate(
        [("whole_tokens_per_s_median", "whole model, one process"), ("pipeline_tokens_per_s_median", "3 providers")]
    ):
        values = [results["profiles"][p][key] for p in profiles]
        left.bar([i + offset * width for i in range(len(profiles))], values, width, label=label)
    left.set_xticks([i + width / 2 for i in range(len(profiles))], profiles, fontsize="small")
    left.set_ylabel("decode tokens/s (median)")
    left.set_ylim(0, 1.3 * max(results["profiles"][p]["whole_tokens_per_s_median"] for p in profiles))
    left.legend(loc="upper center", ncols=2, fontsize="small")
    left.set_title("Decode speed")
    for i, p in enumerate(profiles):
        right.bar(
            [i * 4 + h for h in range(HOPS)],
            results["profiles"][p]["hop_round_trip_ms_median"],
            label=f"{p}: hop round trip",
        )
    right.set_xticks([i * 4 + 1 for i in range(len(profiles))], profiles)
    right.set_ylabel("ms per step (median)")
    right.set_title("Round trip per hop (hops 0, 1, 2)")
    right.set_ylim(0, 1.3 * max(max(results["profiles"][p]["hop_round_trip_ms_median"]) for p in profiles))
    right.legend(loc="upper center", ncols=2, fontsize="small")
    for p in profiles:
        ratios = [r["ratio"] for r in results["profiles"][p]["rounds"]]
        rounds.plot(range(1, len(ratios) + 1), ratios, marker="o", label=f"{p}: median {statistics.median(ratios):.3f}")
    rounds.axhline(TARGET, color="grey", linestyle="--", label=f"target {TARGET}")
    rounds.set_xlabel("round (whole model run right before and after each job)")
    rounds.set_ylabel("pipeline / whole model, decode tokens/s")
    rounds.set_title("Ratio per round")
    rounds.legend(fontsize="small")
    fig.suptitle(f"SmolLM2-135M q4 over loopback; target ratio ≥ {TARGET}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per provider and for the whole")
    parser.add_argument("--profiles", default="redis,memory")
    parser.add_argument("--fast-path", default="on,off", help="the relay's fast path: on, off or both")
    args = parser.parse_args()
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    whole = whole_model(args.threads)
    started = time.time()
    profiles = {
        name if mode == "on" else f"{name}-plain": run_profile(name, args, whole, fast_path=mode)
        for name in args.profiles.split(",")
        for mode in args.fast_path.split(",")
    }
    results = {
        "benchmark": "pipeline",
        "model": "SmolLM2-135M-Instruct q4, shards 0-10,10-20,20-30",
        "machine": {"cpus": os.cpu_count(), "threads_per_process": args.threads},
        "decode_tokens": args.tokens,
        "rounds": args.rounds,
        "target_ratio": TARGET,
        "profiles": profiles,
        "seconds": round(time.time() - started, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pipeline.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "pipeline.png")
    print(
        json.dumps(
            {k: v for k, v in results.items() if k != "profiles"}
            | {"profiles": {p: {k: v for k, v in r.items() if k != "rounds"} for p, r in profiles.items()}},
            indent=2,
        )
    )
    print(
        " | ".join(
            f"{p}: pipeline {r['pipeline_tokens_per_s_median']:.1f} tok/s "
            f"vs whole {r['whole_tokens_per_s_median']:.1f}, "
            f"ratio {r['ratio_median']:.3f} (target ≥ {TARGET}), overhead/hop {r['overhead_per_hop_ms_median']:.2f} ms"
            for p, r in profiles.items()
        )
    )


if __name__ == "__main__":
    main()
