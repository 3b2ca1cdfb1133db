"""Fraud proofs in figures: what a check catches, what it never wrongly catches, what it costs.

The real model (q4, shards 0-10, 10-20, 20-30) serves greedy generations the way providers do (float16 hidden
states between hops, the head's argmax token back), and the referee (verification/referee.py, native ONNX Runtime,
one thread, the tolerance of verification/tolerance.py) judges them:

  - detection: noise of a chosen size (relative to the layer's RMS) added to one layer's output of the middle hop at
    one step and carried on through the layers after it, as a lazy or lying provider's would be; caught when phase 1
    flags the hop's output at that step and re-executing that one layer from the provider's own revealed input
    proves it. Rate over prompts × layers × steps, per size (a plot);
  - false positives: honest providers in their own processes on other thread counts (1, 2 and 4 ONNX Runtime
    threads), every hop re-run by the referee (phase 1) and every layer of every hop re-executed from the
    provider's states (the phase 2 proof), over N audits: the count must be 0, with the largest excess seen;
  - the referee's cost: phase 1 (every hop re-run) and one layer re-executed, against the job's own compute;
  - commitments: hashing a step's layer states against the step itself (prefill and decode), and the pipeline's
    decode ratio (bench/pipeline.py, three provider processes over loopback) with and without commitments;
  - transcripts: the bytes per token the server keeps for the window.

    .venv/bin/python bench/verification.py [--prompts 6] [--steps 8] [--pipeline-pairs 3] [--pipeline-rounds 2]
                                           [--no-pipeline]

Prints JSON and a summary; writes bench/results/verification.json and verification.png.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference import commitment  # noqa: E402
from inference.config import ShardSpec  # noqa: E402
from inference.gguf_model import GGUFModel, smollm2_path  # noqa: E402
from inference.runtime import ShardRuntime, configure_threads  # noqa: E402
from inference.shard_builder import build_shard  # noqa: E402
from inference.tokenizer import ChatTokenizer  # noqa: E402
from verification import referee, tolerance  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PLAN = ((0, 10), (10, 20), (20, 30))
QUANT = "q4"
PROMPTS = [
    "Name three colours.",
    "Explain photosynthesis to a child in two sentences.",
    "Write a haiku about the sea.",
    "What is 17 times 23? Show your steps.",
    "Translate 'good morning, how are you?' into French and German.",
    "List four prime numbers greater than fifty.",
    "Give a short recipe for pancakes.",
    "Why is the sky blue?",
]
SCALES = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
PROBED_LAYERS = (0, 4, 9)  # of the middle hop (global layers 10, 14, 19)
THREADS = (1, 2, 4)


def shards(model: GGUFModel) -> list[ShardRuntime]:
    n = model.config.n_layers
    return [
        ShardRuntime(build_shard(model, ShardSpec("smollm2-135m", QUANT, a, b, n)).SerializeToString()) for a, b in PLAN
    ]


def one_layers(model: GGUFModel, first: int, last: int) -> dict[int, ShardRuntime]:
    n = model.config.n_layers
    return {
        layer: ShardRuntime(
            build_shard(model, ShardSpec("smollm2-135m", QUANT, layer, layer + 1, n)).SerializeToString()
        )
        for layer in range(first, last)
    }


def serve(runtimes: list[ShardRuntime], prompt: list[int], steps: int, session: str) -> dict[str, Any]:
    """One greedy job through the hops as providers serve it: per hop and step its input, its output as the next
    hop receives it (float16) or the head's token, its layer states, and the time each step took."""
    hops = len(runtimes)
    record: dict[str, Any] = {
        "inputs": [[] for _ in range(hops)],
        "outputs": [[] for _ in range(hops)],
        "states": [[] for _ in range(hops)],
        "seconds": [[] for _ in range(hops)],
    }
    for runtime in runtimes:
        runtime.open(session)
    try:
        fed = np.asarray([prompt], dtype=np.int64)
        for _ in range(steps):
            x: np.ndarray = fed
            for hop, runtime in enumerate(runtimes):
                record["inputs"][hop].append(x)
                started = time.perf_counter()
                result = runtime.step(session, x)
                record["seconds"][hop].append(time.perf_counter() - started)
                record["states"][hop].append(np.asarray(result.layer_hidden))
                if runtime.spec.has_head:
                    token = int(np.argmax(result.output[-1]))
                    record["outputs"][hop].append(np.array([[token]], dtype=np.int64))
                    fed = np.array([[token]], dtype=np.int64)
                else:
                    x = np.asarray(result.output, dtype=np.float16)
                    record["outputs"][hop].append(x)
    finally:
        for runtime in runtimes:
            runtime.close(session)
    return record


def _provider(threads: int, prompts: list[list[int]], steps: int) -> list[dict[str, Any]]:
    """An honest provider process on `threads` ONNX Runtime threads serving every prompt."""
    configure_threads(threads)
    runtimes = shards(GGUFModel(smollm2_path()))
    return [serve(runtimes, prompt, steps, f"p{i}") for i, prompt in enumerate(prompts)]


def honest_records(prompts: list[list[int]], steps: int) -> dict[int, list[dict[str, Any]]]:
    context = multiprocessing.get_context("spawn")
    out = {}
    for threads in THREADS:
        with context.Pool(1) as pool:
            out[threads] = pool.apply(_provider, (threads, prompts, steps))
        print(f"honest provider on {threads} thread(s): served", file=sys.stderr, flush=True)
    return out


def _same(runtime: ShardRuntime) -> ShardRuntime:
    return runtime


def works(record: dict[str, Any], runtimes: list[ShardRuntime]) -> list[referee.HopWork]:
    return [
        referee.HopWork(
            hop=h, load=functools.partial(_same, runtime), inputs=record["inputs"][h], outputs=record["outputs"][h]
        )
        for h, runtime in enumerate(runtimes)
    ]


def layer_inputs(record: dict[str, Any], hop: int, index: int, step: int) -> list[np.ndarray]:
    """What a one-layer re-execution of layer `index` of `hop` is fed: the hop's input (first layer) or the
    provider's own states of the layer before, steps 0..step."""
    if index == 0:
        return [np.asarray(record["inputs"][hop][s]) for s in range(step + 1)]
    return [record["states"][hop][s][index - 1] for s in range(step + 1)]


def false_positives(
    records: dict[int, list[dict[str, Any]]], runtimes: list[ShardRuntime], layers: dict[int, ShardRuntime], steps: int
) -> dict[str, Any]:
    """Every honest job audited: phase 1 over every hop, and the proof at every layer of every hop (last step)."""
    audits = flagged = 0
    worst_hop = worst_layer = 0.0
    per_threads = {}
    for threads, jobs in records.items():
        t_worst = 0.0
        for record in jobs:
            audits += 1
            bad = False
            for hop, runtime in enumerate(runtimes):
                for step, result in referee.rerun(runtime, record["inputs"][hop], until=steps):
                    e = referee.output_excess(result, record["outputs"][hop][step], has_head=runtime.spec.has_head)
                    worst_hop = max(worst_hop, e)
                    t_worst = max(t_worst, e)
                    bad = bad or e > 1  # phase 1 would accuse this hop
                first = runtime.spec.first_layer
                for index in range(runtime.spec.end_layer - first):
                    step = steps - 1
                    claimed = record["states"][hop][step][index]
                    e, _ = referee.layer_excess(layers[first + index], layer_inputs(record, hop, index, step), claimed)
                    worst_layer = max(worst_layer, e)
                    t_worst = max(t_worst, e)
                    bad = bad or e > 1
            flagged += bad
        per_threads[threads] = round(t_worst, 4)
    return {
        "audits": audits,
        "false_positives": flagged,
        "worst_hop_excess": round(worst_hop, 4),
        "worst_layer_excess": round(worst_layer, 4),
        "worst_excess_by_threads": per_threads,
    }


def wasm_false_positives() -> dict[str, Any]:
    """The tab's WASM providers, judged by the same referee checks in bench/tolerance.py (which runs the tab's own
    runtime in Chromium): its transcripts count as audits here when it measured the tolerance now in force."""
    path = RESULTS / "tolerance.json"
    if not path.exists():
        return {"measured": False, "why": "run bench/tolerance.py first"}
    data = json.loads(path.read_text())
    if data["constants"]["in_force"]["version"] != tolerance.VERSION:
        return {"measured": False, "why": f"bench/tolerance.py measured tolerance {data['constants']['in_force']}"}
    out: dict[str, Any] = {"measured": True, "source": "bench/results/tolerance.json"}
    for quant, backends in data["figures"].items():
        if "wasm" not in backends:
            continue
        deciding = ("layer", "hop", "logits", "own")  # bisect only steers; the gaps below
        worst = max(
            float(per_layer["excess_in_force"])
            for check in deciding
            for per_layer in backends["wasm"].get(check, {}).values()
        )
        worst = max(worst, float(backends["wasm"]["gaps"]["excess_in_force"]))
        out[quant] = {
            "audits": data["wasm"]["prompts"],
            "steps_each": data["decode_steps_per_prompt"] + 1,
            "false_positives": int(worst > 1),
            "worst_excess": round(worst, 4),
        }
    return out


def detection(
    record: dict[str, Any], ours: list[Any], layers: dict[int, ShardRuntime], steps: int, rng: np.random.Generator
) -> dict[float, list[bool]]:
    """Noise on one layer of the middle hop at one step; `ours` is the referee's re-run of that hop."""
    hop, first = 1, PLAN[1][0]
    caught: dict[float, list[bool]] = {s: [] for s in SCALES}
    for index in PROBED_LAYERS:
        for step in sorted({0, steps - 1}):
            states = record["states"][hop][step]
            rms = float(np.sqrt(np.mean(states[index] ** 2)))
            unit = rng.standard_normal(states.shape[1:]).astype(np.float32)
            for scale in SCALES:
                noise = unit * rms * scale
                claimed = states[index] + noise
                output = (record["outputs"][hop][step].astype(np.float32) + noise[None]).astype(np.float16)
                phase1 = referee.output_excess(ours[step], output, has_head=False) > 1
                proof, _ = referee.layer_excess(layers[first + index], layer_inputs(record, hop, index, step), claimed)
                caught[scale].append(bool(phase1 and proof > 1))
    return caught


def referee_cost(
    record: dict[str, Any], runtimes: list[ShardRuntime], layers: dict[int, ShardRuntime], steps: int
) -> dict[str, float]:
    job_s = sum(sum(seconds) for seconds in record["seconds"])
    started = time.perf_counter()
    referee.locate(works(record, runtimes), steps=steps)
    phase1_s = time.perf_counter() - started
    started = time.perf_counter()
    referee.layer_excess(layers[PLAN[1][0] + 4], layer_inputs(record, 1, 4, steps - 1), record["states"][1][-1][4])
    layer_s = time.perf_counter() - started
    return {"job_s": job_s, "phase1_s": phase1_s, "layer_s": layer_s}


def commit_cost(record: dict[str, Any]) -> dict[str, float]:
    """Hashing each step's layer states (what the agent does after answering) against the step's own time."""
    prefill: list[float] = []
    decode: list[float] = []
    for hop in range(len(PLAN)):
        for step, states in enumerate(record["states"][hop]):
            started = time.perf_counter()
            commitment.commit(states)
            spent = time.perf_counter() - started
            (prefill if step == 0 else decode).append(spent / record["seconds"][hop][step])
    return {"prefill": statistics.median(prefill), "decode": statistics.median(decode)}


def pipeline(pairs: int, rounds: int) -> dict[str, Any]:
    """bench/pipeline.py's in-memory profile with providers committing and not, alternated `pairs` times (off, on,
    off, on, ...: the machine's drift hits both alike), each round's pipeline against the whole model run right
    before and after it; the ratio of the two medians."""
    from bench import pipeline as bench_pipeline

    args = argparse.Namespace(rounds=rounds, tokens=64, threads=1)
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    whole = bench_pipeline.whole_model(1)
    ratios: dict[str, list[float]] = {"off": [], "on": []}
    tokens: dict[str, list[float]] = {"off": [], "on": []}
    for pair in range(pairs):
        for label, on in (("off", False), ("on", True)):
            result = bench_pipeline.run_profile("memory", args, whole, commitments=on)
            ratios[label] += [r["ratio"] for r in result["rounds"]]
            tokens[label] += [r["pipeline_tokens_per_s"] for r in result["rounds"]]
            print(f"pair {pair}: commitments {label}: ratio {result['ratio_median']}", file=sys.stderr, flush=True)
    out: dict[str, Any] = {
        label: {
            "ratio_median": round(statistics.median(ratios[label]), 4),
            "pipeline_tokens_per_s_median": round(statistics.median(tokens[label]), 2),
            "ratios": [round(r, 4) for r in ratios[label]],
        }
        for label in ratios
    }
    out["ratio_on_over_off"] = round(out["on"]["ratio_median"] / out["off"]["ratio_median"], 4)
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    scales = [float(s) for s in results["detection"]["rate_by_scale"]]
    rates = list(results["detection"]["rate_by_scale"].values())
    left.semilogx(scales, rates, marker="o", label="caught when audited")
    left.axhline(1.0, color="grey", linewidth=0.6)
    left.set_xlabel("noise on one layer's output (× the layer's RMS)")
    left.set_ylabel("detection rate")
    left.set_ylim(-0.05, 1.05)
    left.set_title(f"Detection: {results['detection']['trials_per_scale']} trials per size")
    left.legend()
    fp = results["false_positives"]
    labels = [f"{t} thread(s)" for t in fp["worst_excess_by_threads"]]
    right.bar(labels, list(fp["worst_excess_by_threads"].values()), color="tab:green")
    right.axhline(1.0, color="tab:red", linestyle="--", label="the tolerance (excess 1)")
    right.set_ylabel("largest excess, honest providers")
    right.set_title(f"False positives: {fp['false_positives']} of {fp['audits']} honest audits")
    right.legend()
    fig.suptitle(f"SmolLM2-135M {QUANT}, tolerance {results['tolerance']['version']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--steps", type=int, default=8, help="steps per job (the prefill and steps-1 decode steps)")
    parser.add_argument("--pipeline-pairs", type=int, default=3, help="markets with commitments off then on")
    parser.add_argument("--pipeline-rounds", type=int, default=2, help="jobs per market, after a warm-up job")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the pipeline with and without commitments")
    args = parser.parse_args()
    started = time.time()
    model = GGUFModel(smollm2_path())
    tokenizer = ChatTokenizer.from_gguf(model)
    prompts = [tokenizer.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS[: args.prompts]]
    records = honest_records(prompts, args.steps)
    configure_threads(1)
    runtimes = shards(model)
    layers = one_layers(model, 0, model.config.n_layers)
    fp = false_positives(records, runtimes, layers, args.steps)
    print(f"false positives: {fp}", file=sys.stderr, flush=True)

    rng = np.random.default_rng(11)
    caught: dict[float, list[bool]] = {s: [] for s in SCALES}
    costs, commits, sizes = [], [], []
    for record, prompt in zip(records[1], prompts, strict=True):
        ours = [result for _, result in referee.rerun(runtimes[1], record["inputs"][1], until=args.steps)]
        for scale, hits in detection(record, ours, layers, args.steps, rng).items():
            caught[scale] += hits
        costs.append(referee_cost(record, runtimes, layers, args.steps))
        commits.append(commit_cost(record))
        data = referee.pack(record["inputs"], record["outputs"][-1], steps=args.steps)
        sizes.append(len(data) / (len(prompt) + args.steps - 1))
    rate = {str(s): round(sum(h) / len(h), 3) for s, h in caught.items()}
    smallest = next((s for s in SCALES if all(caught[s])), None)
    results: dict[str, Any] = {
        "benchmark": "verification",
        "model": f"SmolLM2-135M-Instruct {QUANT}, shards " + ",".join(f"{a}-{b}" for a, b in PLAN),
        "machine": {"cpus": os.cpu_count()},
        "prompts": len(prompts),
        "steps_per_job": args.steps,
        "tolerance": tolerance.describe(),
        "detection": {
            "rate_by_scale": rate,
            "trials_per_scale": len(caught[SCALES[0]]),
            "smallest_scale_always_caught": smallest,
            "layers_probed": [PLAN[1][0] + i for i in PROBED_LAYERS],
        },
        "false_positives": fp,
        "false_positives_wasm": wasm_false_positives(),
        "referee": {
            "phase1_over_job_compute_median": round(statistics.median(c["phase1_s"] / c["job_s"] for c in costs), 3),
            "one_layer_over_job_compute_median": round(statistics.median(c["layer_s"] / c["job_s"] for c in costs), 4),
            "layers_recomputed_per_proof": 1,
            "reveals_per_dispute": f"at most ceil(log2(10)) + 2 = {int(np.ceil(np.log2(10))) + 2} on a 10-layer hop",
        },
        "commitments": {
            "hash_over_step_prefill_median": round(statistics.median(c["prefill"] for c in commits), 5),
            "hash_over_step_decode_median": round(statistics.median(c["decode"] for c in commits), 5),
        },
        "transcript_bytes_per_token_median": round(statistics.median(sizes), 1),
    }
    if not args.no_pipeline:
        results["commitments"]["pipeline"] = pipeline(args.pipeline_pairs, args.pipeline_rounds)
    results["seconds"] = round(time.time() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "verification.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "verification.png")
    print(json.dumps(results, indent=2))
    summary = [
        f"false positives {fp['false_positives']}/{fp['audits']} "
        f"(worst excess {max(fp['worst_hop_excess'], fp['worst_layer_excess'])})",
        f"always caught from noise {smallest} × RMS",
        f"referee phase 1 = {results['referee']['phase1_over_job_compute_median']} × the job's compute",
        f"transcript {results['transcript_bytes_per_token_median']} B/token",
    ]
    if "pipeline" in results["commitments"]:
        summary.append(
            f"pipeline ratio with/without commitments {results['commitments']['pipeline']['ratio_on_over_off']}"
        )
    print(" | ".join(summary))


if __name__ == "__main__":
    main()
