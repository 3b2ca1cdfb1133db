"""The provider tab (onnxruntime-web, WASM, in headless Chromium) against native ONNX Runtime on this machine.

Starts a market (Daphne, SQLite, the real model imported as q4 shards 0-10, 10-20, 20-30), opens the provider tab
in Debian's Chromium with a fresh profile, and measures in one run:
  - speed: ms per layer-token of decode steps on the benchmark shard (10-20), the tab's own benchmark against
    worker_web.agent.provider.time_decode natively, interleaved over rounds, same thread count;
    ratio = native / browser;
  - shard load time, cold (downloaded over loopback, hashed, stored in IndexedDB, session created) and cached
    (after a reload: read from IndexedDB, hashed, session created), for every shard;
  - honest disagreement: for several prompts, the native chain generates greedily while recording each shard's
    inputs (float16 hidden states, as the server relays them); the tab runs every shard on exactly those inputs and
    the largest |difference| of its outputs (hidden states, per-layer hidden states, logits) against native ONNX
    Runtime is recorded, with whether the greedy token agrees. These figures set the fraud proofs' tolerance
    (docs/tolerance.md).

    .venv/bin/python bench/browser.py [--rounds 3] [--prompts 4] [--tokens 8] [--threads 2]

Prints JSON and a one-line summary; writes bench/results/browser.json and browser.png.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.gguf_model import GGUFModel, smollm2_path  # noqa: E402
from inference.runtime import ShardRuntime, configure_threads  # noqa: E402
from inference.tokenizer import ChatTokenizer  # noqa: E402
from market.localstack import LocalMarket  # noqa: E402
from worker_web.agent.provider import time_decode  # noqa: E402
from worker_web.testing.tab_driver import BrowserTab, chromium_context  # noqa: E402
from worker_web.testing.tab_parity import (  # noqa: E402
    HIDDEN_ATOL,
    HIDDEN_RTOL,
    LOGITS_ATOL,
    compare,
    descriptors,
    native_runtimes,
    record_chain,
    within_tolerance,
)

RESULTS = Path(__file__).resolve().parent / "results"
PLAN = "0-10,10-20,20-30"
PROMPTS = [
    "What is the capital of France?",
    "Write a long story about a dragon.",
    "Explain photosynthesis briefly.",
    "List three uses of a paperclip.",
    "Translate 'good morning' into Spanish.",
    "What is 17 times 23?",
]
PASSWORD = "bench-tab-password"


def measure_speed(tab: BrowserTab, shard: dict[str, Any], runtime: ShardRuntime, rounds: int) -> dict[str, Any]:
    browser, native = [], []
    for _ in range(rounds):  # interleaved, so the noise of the shared machine hits both alike
        browser.append(tab.benchmark(shard) / 1e6)
        native.append(time_decode(runtime) / 1e6)
    b, n = statistics.median(browser), statistics.median(native)
    return {
        "shard": shard["id"],
        "browser_wasm_ms_per_layer_token": round(b, 4),
        "native_ms_per_layer_token": round(n, 4),
        "ratio_native_over_browser": round(n / b, 3),
        "browser_rounds": [round(x, 4) for x in browser],
        "native_rounds": [round(x, 4) for x in native],
    }


def measure_loads(tab: BrowserTab, shards: list[dict[str, Any]]) -> dict[str, Any]:
    """Cold loads on the fresh profile, then cached loads after a reload (the page's worker starts afresh)."""
    cold = {s["id"]: tab.load(s) for s in shards}
    tab.reload()
    cached = {s["id"]: tab.load(s) for s in shards}
    if any(c["source"] != "cache" for c in cached.values()) or any(c["source"] != "download" for c in cold.values()):
        raise RuntimeError(f"expected downloads then cache hits, got {cold} and {cached}")
    return {
        s["id"]: {
            "megabytes": round(s["size"] / 1e6, 1),
            "cold_ms": round(cold[s["id"]]["totalMs"], 1),
            "cold_download_and_hash_ms": round(cold[s["id"]]["obtainMs"], 1),
            "cached_ms": round(cached[s["id"]]["totalMs"], 1),
            "cached_read_and_hash_ms": round(cached[s["id"]]["obtainMs"], 1),
            "session_create_ms": round(cached[s["id"]]["sessionMs"], 1),
        }
        for s in shards
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    configure_threads(args.threads)
    model = GGUFModel(smollm2_path())
    tokenizer = ChatTokenizer.from_gguf(model)
    prompts = [tokenizer.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS[: args.prompts]]
    work = Path(tempfile.mkdtemp(prefix="bench-browser-"))
    env = {"MEDIA_ROOT": str(work / "media"), "LOG_LEVEL": "WARNING", "DATABASE_URL": f"sqlite:///{work / 'db'}"}
    with LocalMarket(env=env, logs=work / "logs") as market:
        market.manage("migrate", "--noinput", "-v0")
        for quant in args.quants.split(","):
            market.manage("import_model", "smollm2-135m", "--plan", PLAN, "--quant", quant)
        token = market.manage("issue_token", "bench-tab", "--create", "--password", PASSWORD)
        market.start_server()
        with chromium_context(work / "profile") as context:
            tab = BrowserTab(context, market.url, log=work / "logs" / "tab-console.log")
            tab.sign_in("bench-tab", PASSWORD)
            threads = int(tab.text("device-threads"))
            per_quant = {}
            for quant in args.quants.split(","):
                shards = descriptors(market, token, quant, model.config)
                chain = native_runtimes(work / "media", shards)
                per_quant[quant] = measure_quant(tab, args, shards, chain, prompts)
    return {"threads": {"browser_wasm": threads, "native": args.threads}, "quants": per_quant}


def measure_quant(
    tab: BrowserTab, args: argparse.Namespace, shards: list[dict[str, Any]], chain: list[ShardRuntime], prompts: Any
) -> dict[str, Any]:
    loads = measure_loads(tab, shards)
    speed = measure_speed(tab, shards[1], chain[1], args.rounds)
    deviations = []
    for text, ids in zip(PROMPTS, prompts, strict=False):
        inputs = record_chain(chain, ids, args.tokens)
        per_shard = {s["id"]: compare(tab, s, r, x) for s, r, x in zip(shards, chain, inputs, strict=True)}
        deviations.append({"prompt": text, "prompt_tokens": len(ids), "shards": per_shard})
    print(f"{shards[0]['id'].split(':')[1]}: measured", file=sys.stderr, flush=True)
    return {"speed": speed, "loads": loads, "max_abs_difference": summarise(deviations), "deviations": deviations}


def summarise(deviations: list[dict[str, Any]]) -> dict[str, Any]:
    """Per shard, the largest figures over all prompts, and whether every prompt stayed inside the tolerance."""
    keys = ("output", "layer_hidden", "output_scale", "layer_hidden_scale")
    summary = {}
    for shard in deviations[0]["shards"]:
        results = [d["shards"][shard] for d in deviations]
        has_head = results[0]["greedy_token_agrees"] is not None
        summary[shard] = {key: max(r[key] for r in results) for key in keys} | {
            "greedy_token_agrees_everywhere": all(r["greedy_token_agrees"] is not False for r in results),
            "within_tolerance_everywhere": all(within_tolerance(r, has_head=has_head) for r in results),
        }
    return summary


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quants = list(results["quants"])
    fig, (speed, loads, dev) = plt.subplots(1, 3, figsize=(15, 4.2))
    x = np.arange(len(quants))
    for offset, (key, label) in enumerate(
        [("native_ms_per_layer_token", "native ORT"), ("browser_wasm_ms_per_layer_token", "browser WASM")]
    ):
        speed.bar(x + (offset - 0.5) * 0.4, [results["quants"][q]["speed"][key] for q in quants], 0.4, label=label)
    speed.set_xticks(
        x, [f"{q}\nratio {results['quants'][q]['speed']['ratio_native_over_browser']:.2f}" for q in quants]
    )
    speed.set_ylabel("ms per layer-token, decode (median)")
    speed.set_title("Decode speed on shard 10-20")
    speed.legend(fontsize="small")
    labels, cold, cached = [], [], []
    for q in quants:
        for shard, figures in results["quants"][q]["loads"].items():
            labels.append(f"{q}\n{shard.split(':')[-1]}")
            cold.append(figures["cold_ms"])
            cached.append(figures["cached_ms"])
    x = np.arange(len(labels))
    loads.bar(x - 0.2, cold, 0.4, label="cold (download, hash, store)")
    loads.bar(x + 0.2, cached, 0.4, label="cached (IndexedDB, hash)")
    loads.set_xticks(x, labels, fontsize="small")
    loads.set_ylabel("ms until the shard is loaded")
    loads.set_title("Shard load in the tab")
    loads.legend(fontsize="small")
    labels, hidden, layers = [], [], []
    for q in quants:
        for shard, figures in results["quants"][q]["max_abs_difference"].items():
            labels.append(f"{q}\n{shard.split(':')[-1]}")
            hidden.append(figures["output"])
            layers.append(figures["layer_hidden"])
    x = np.arange(len(labels))
    dev.bar(x - 0.2, hidden, 0.4, label="shard output (20-30: logits)")
    dev.bar(x + 0.2, layers, 0.4, label="per-layer hidden states")
    dev.set_yscale("log")
    dev.set_xticks(x, labels, fontsize="small")
    dev.set_ylabel("max |browser - native|")
    dev.set_title(f"Honest disagreement, {results['prompts']} prompts")
    dev.legend(fontsize="small")
    fig.suptitle("SmolLM2-135M: onnxruntime-web 1.30 (WASM, headless Chromium) against native ONNX Runtime")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=4, help=f"at most {len(PROMPTS)}")
    parser.add_argument("--tokens", type=int, default=8, help="greedy decode steps per prompt after the prefill")
    parser.add_argument("--quants", default="q4,f32")
    parser.add_argument("--threads", type=int, default=2, help="native ORT threads (the tab uses min(4, cores))")
    args = parser.parse_args()
    os.environ.pop("REDIS_URL", None)
    started = time.time()
    measured = run(args)
    results = {
        "benchmark": "browser",
        "model": f"SmolLM2-135M-Instruct, shards {PLAN}",
        "machine": {"cpus": os.cpu_count(), "browser": "Debian chromium, headless, onnxruntime-web 1.30.0 WASM"},
        "rounds": args.rounds,
        "prompts": min(args.prompts, len(PROMPTS)),
        "decode_tokens_per_prompt": args.tokens,
        "tolerance": {"hidden_rtol": HIDDEN_RTOL, "hidden_atol": HIDDEN_ATOL, "logits_atol": LOGITS_ATOL},
        **measured,
        "seconds": round(time.time() - started, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "browser.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "browser.png")
    brief = {q: {k: v for k, v in r.items() if k != "deviations"} for q, r in results["quants"].items()}
    print(json.dumps({k: v for k, v in results.items() if k != "quants"} | {"quants": brief}, indent=2))
    for quant, r in results["quants"].items():
        s = r["speed"]
        hidden = max(v["output"] for k, v in r["max_abs_difference"].items() if not k.endswith("20-30"))
        agree = all(v["greedy_token_agrees_everywhere"] for v in r["max_abs_difference"].values())
        inside = all(v["within_tolerance_everywhere"] for v in r["max_abs_difference"].values())
        print(
            f"{quant}: browser WASM {s['browser_wasm_ms_per_layer_token']:.3f} ms/layer-token vs native "
            f"{s['native_ms_per_layer_token']:.3f} (ratio {s['ratio_native_over_browser']:.3f}); "
            f"max |hidden diff| {hidden:.3g}; greedy tokens agree: {agree}; inside the tolerance: {inside}"
        )


if __name__ == "__main__":
    main()
