"""Calibrate the fraud proofs' tolerance (verification/tolerance.py) from honest disagreement between backends.

The referee re-executes challenged work with native ONNX Runtime on one thread; an honest provider ran the same shard
elsewhere. This bench plays both sides for the shards of plan 0-10,10-20,20-30, judging exactly as
verification/referee.py does:

  providers  `native-N`: the whole chain in its own process on N intra-op threads (the pool is global to a process),
             generating greedily from each prompt and keeping every hop's relayed input (token ids, float16 states),
             its float32 output and its per-layer float32 states (what it would reveal). `wasm`: the provider tab
             (onnxruntime-web in headless Chromium, a market started for it) runs each hop on the inputs a native
             chain relayed: a pipeline in which the tab serves that hop and native providers the others.
  referee    this process, native, 1 thread. Checks:
             layer   one layer re-executed (referee.layer_excess: a one-layer shard, steps 0..t as one prefill) from
                     the provider's revealed input, against its revealed output at step t: the proof (LAYER)
             bisect  the provider's per-layer states against the referee's own re-run of the hop (LAYER; it only
                     steers the bisection, a wrong turn costs reveals, never a verdict)
             hop     the hop's float16 output against the referee's float32 re-run from the float16 inputs (HOP)
             own     the float16 output against the provider's own last layer, the bisection's end (HOP)
             logits  the provider's 16 largest logits against the referee's at those tokens (LOGITS, sampled jobs)
             gap     the referee's best logit minus its logit of the provider's token; own_gap: the same with the
                     referee's numpy head on the provider's last state (LOGIT_GAP)

Per check and layer: max and p99.9 of |theirs - ours| and of |theirs - ours| / |ours| (where |ours| >= 1). Each
tolerance is fitted to the largest honest disagreement (for rtol on a 1-2-5 grid, the smallest atol covering every
element; the pair with the smallest tolerance at the median |ours|), times --margin. Then perturbations (noise on one
layer's output, a layer's update scaled or skipped, noise on a hop's output, the runner-up token) are judged.

    .venv/bin/python bench/tolerance.py [--prompts 12] [--steps 16] [--quants q4,f32] [--margin 8]
        [--backends native-1,native-2,native-4,wasm] [--wasm-prompts 12]

Writes bench/results/tolerance.json and tolerance.png; prints a summary and markdown tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.config import ShardSpec, parse_plan  # noqa: E402
from inference.gguf_model import GGUFModel, smollm2_path  # noqa: E402
from inference.runtime import ShardRuntime, configure_threads  # noqa: E402
from inference.shard_builder import build_shard  # noqa: E402
from inference.tokenizer import ChatTokenizer  # noqa: E402
from verification import referee, tolerance  # noqa: E402
from verification.tolerance import Tolerance  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODEL, PLAN = "smollm2-135m", "0-10,10-20,20-30"
TOP_LOGITS = 16  # verification/services/transcripts.py keeps a sampled head's 16 largest logits (that module needs Django)
REL_FLOOR = 1.0  # relative figures |d| / |ours| only where |ours| >= 1: below, atol rules
EDGES = 10.0 ** np.arange(-12.0, 4.005, 0.01)  # log bins (2.3 % wide) for percentiles of |d| and |d| / |ours|
RTOLS = [0.0] + [m * 10.0**k for k in range(-9, 0) for m in (1.0, 2.0, 5.0)]
ATOL_FLOOR = 1e-6  # a fitted atol is never 0: an element whose |ours| is 0 needs some room
CHECKS = {"layer": "LAYER", "bisect": "LAYER", "hop": "HOP", "own": "HOP", "logits": "LOGITS"}
USER = "user"
PROMPTS: list[list[dict[str, str]]] = [
    [{"role": USER, "content": "What is the capital of France?"}],
    [{"role": USER, "content": "Write a short poem about the sea at night."}],
    [{"role": USER, "content": "Explain photosynthesis to a ten-year-old."}],
    [{"role": USER, "content": "Complete this Python function:\n\ndef fibonacci(n: int) -> int:\n    "}],
    [{"role": USER, "content": "What is 17 times 23? Show your steps."}],
    [{"role": USER, "content": "Translate 'good morning, how are you?' into Spanish and German."}],
    [
        {"role": "system", "content": "You are a terse assistant. Answer in one line."},
        {"role": USER, "content": "Give me three tips for sleeping better."},
    ],
    [
        {
            "role": USER,
            "content": "Summarise in two sentences: The lighthouse on the northern cape was built in 1871 after a "
            "winter in which four ships ran aground on the reef. Its keeper, a former sailor named Elias Brandt, "
            "kept a log of every vessel that passed, the weather at each watch, and the birds that struck the "
            "lantern during migration. When the light was automated in 1962 the logs were moved to the town "
            "museum, where historians still use them to reconstruct the storms of the nineteenth century.",
        }
    ],
    [{"role": USER, "content": "Résume en une phrase : le chat dort sur le canapé depuis ce matin."}],
    [
        {"role": USER, "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": USER, "content": "Tell me a fun fact about octopuses."},
    ],
    [{"role": USER, "content": "Write a JSON object describing a book, with title, author and year."}],
    [{"role": USER, "content": "List the planets of the solar system, closest to the sun first."}],
    [{"role": USER, "content": "Why is the sky blue? 🌤️ Keep it short."}],
    [{"role": USER, "content": "SELECT name FROM users WHERE age > 30; -- what does this SQL query do?"}],
]


# --- the providers -----------------------------------------------------------------------------------------------


def encode_prompts(model: GGUFModel, count: int) -> list[list[int]]:
    tokenizer = ChatTokenizer.from_gguf(model)
    return [tokenizer.encode_chat(messages) for messages in PROMPTS[:count]]


def shard_bytes(model: GGUFModel, quant: str, first: int, end: int) -> bytes:
    return build_shard(model, ShardSpec(MODEL, quant, first, end, model.config.n_layers)).SerializeToString()


def chain(model: GGUFModel, quant: str) -> list[ShardRuntime]:
    ranges = parse_plan(PLAN, n_layers=model.config.n_layers)
    return [ShardRuntime(shard_bytes(model, quant, first, end)) for first, end in ranges]


def record_native(runtimes: list[ShardRuntime], ids: list[int], steps: int) -> dict[str, np.ndarray]:
    """Greedy generation through the chain as a pipeline of providers runs it: per hop and step (`_<hop>_<step>`),
    the relayed input (in), the float32 output (out) and the per-layer states it would reveal (lh)."""
    arrays: dict[str, np.ndarray] = {}
    for runtime in runtimes:
        runtime.open("provider")
    value = np.array([ids], dtype=np.int64)
    for step in range(steps + 1):
        for hop, runtime in enumerate(runtimes):
            result = runtime.step("provider", value)
            arrays |= {f"in_{hop}_{step}": value, f"out_{hop}_{step}": result.output, f"lh_{hop}_{step}": result.layer_hidden}
            value = result.output.astype(np.float16)
        value = np.array([[int(np.argmax(arrays[f"out_{len(runtimes) - 1}_{step}"][-1]))]], dtype=np.int64)
    for runtime in runtimes:
        runtime.close("provider")
    return arrays


def provide_native(args: argparse.Namespace) -> None:
    """The provider process of `native-<threads>`: its transcripts go to --work/<quant>/<prompt>.npz."""
    configure_threads(args.provide_threads)
    model = GGUFModel(smollm2_path())
    prompts = encode_prompts(model, args.prompts)
    for quant in args.quants.split(","):
        runtimes = chain(model, quant)
        (Path(args.work) / quant).mkdir(parents=True, exist_ok=True)
        for index, ids in enumerate(prompts):
            np.savez(Path(args.work) / quant / f"{index}.npz", **record_native(runtimes, ids, args.steps))  # type: ignore[arg-type]


def provide_wasm(args: argparse.Namespace, model: GGUFModel, prompts: list[list[int]], work: Path) -> dict[str, Any]:
    """The tab's transcripts, each hop run in the tab on the inputs a native chain (this process) relayed."""
    from market.localstack import LocalMarket
    from worker_web.tab_driver import BrowserTab, chromium_context
    from worker_web.tab_parity import descriptors, native_runtimes, record_chain

    env = {"MEDIA_ROOT": str(work / "media"), "LOG_LEVEL": "WARNING", "DATABASE_URL": f"sqlite:///{work / 'db'}"}
    info: dict[str, Any] = {"prompts": min(args.wasm_prompts, len(prompts)), "shard_sha256": {}}
    with LocalMarket(env=env, logs=work / "logs") as market:
        market.manage("migrate", "--noinput", "-v0")
        for quant in args.quants.split(","):
            market.manage("import_model", MODEL, "--plan", PLAN, "--quant", quant)
        token = market.manage("issue_token", "bench-tolerance", "--create", "--password", "bench-tolerance-pw")
        market.start_server()
        with chromium_context(work / "profile") as context:
            tab = BrowserTab(context, market.url, log=work / "logs" / "tab-console.log")
            tab.sign_in("bench-tolerance", "bench-tolerance-pw")
            info["threads"] = int(tab.text("device-threads"))
            for quant in args.quants.split(","):
                shards = descriptors(market, token, quant, model.config)
                info["shard_sha256"][quant] = [s["sha256"] for s in shards]
                runtimes = native_runtimes(work / "media", shards)
                (work / "wasm" / quant).mkdir(parents=True, exist_ok=True)
                for index, ids in enumerate(prompts[: args.wasm_prompts]):
                    inputs = record_chain(runtimes, ids, args.steps)
                    arrays: dict[str, np.ndarray] = {}
                    for hop, (shard, xs) in enumerate(zip(shards, inputs, strict=True)):
                        arrays |= tab_hop(tab, shard, hop, xs, model.config.hidden)
                    np.savez(work / "wasm" / quant / f"{index}.npz", **arrays)  # type: ignore[arg-type]
                print(f"wasm {quant}: {info['prompts']} prompts recorded", file=sys.stderr, flush=True)
    return info


def tab_hop(tab: Any, shard: dict[str, Any], hop: int, inputs: list[np.ndarray], hidden: int) -> dict[str, np.ndarray]:
    """One hop's steps in the tab (a fresh session, step by step with its KV cache), as transcript arrays."""
    steps = [
        ("int64", list(x.shape), x.tobytes()) if x.dtype == np.int64 else ("float32", list(x.shape), x.astype(np.float32).tobytes())
        for x in inputs
    ]
    arrays: dict[str, np.ndarray] = {}
    n_layers = shard["end_layer"] - shard["first_layer"]
    for step, (x, got) in enumerate(zip(inputs, tab.evaluate(shard, steps), strict=True)):
        seq = x.shape[1]
        shape = (1, shard["vocab"]) if shard["has_head"] else (1, seq, hidden)
        arrays[f"in_{hop}_{step}"] = x
        arrays[f"out_{hop}_{step}"] = np.frombuffer(got["output"], dtype=np.float32).reshape(shape)
        arrays[f"lh_{hop}_{step}"] = np.frombuffer(got["layer_hidden"], dtype=np.float32).reshape(n_layers, seq, hidden)
    return arrays


# --- what the referee measures -----------------------------------------------------------------------------------


def _bins(values: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(EDGES, values), minlength=len(EDGES) + 1)


def _front(points: np.ndarray) -> np.ndarray:
    """The (|ours|, |d|) points that no other dominates (|ours| as small or smaller, |d| as large or larger): for
    every atol, rtol >= 0 the largest |d| / (atol + rtol·|ours|) lies on them, so they stand in for millions."""
    points = points[points[:, 1] > 0]
    if len(points) == 0:
        return points
    points = points[np.lexsort((-points[:, 1], points[:, 0]))]
    best = np.maximum.accumulate(points[:, 1])
    return points[np.concatenate([[True], points[1:, 1] > best[:-1]])]


def _percentile(bins: np.ndarray, q: float, ceiling: float) -> float:
    total = int(bins.sum())
    if total == 0:
        return 0.0
    k = int(np.searchsorted(np.cumsum(bins), q * total))
    return 0.0 if k == 0 else min(float(EDGES[k]) if k < len(EDGES) else ceiling, ceiling)


def _zeros() -> np.ndarray:
    return np.zeros(len(EDGES) + 1, dtype=np.int64)


@dataclasses.dataclass
class Figures:
    """Honest disagreement of one check at one layer (or hop), over every element judged: maxima and log histograms
    of |d| = |theirs - ours|, of |d| / |ours| (where |ours| >= REL_FLOOR) and of |ours|, and the front of points."""

    n: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    abs_bins: np.ndarray = dataclasses.field(default_factory=_zeros)
    rel_bins: np.ndarray = dataclasses.field(default_factory=_zeros)
    scale_bins: np.ndarray = dataclasses.field(default_factory=_zeros)
    front: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2)))

    def add(self, theirs: np.ndarray, ours: np.ndarray) -> None:
        theirs32 = np.asarray(theirs, dtype=np.float32).ravel()
        ours32 = np.asarray(ours, dtype=np.float32).ravel()
        diff = np.abs(theirs32 - ours32).astype(np.float64)  # float32 arithmetic, as Tolerance.excess does it
        scale = np.abs(ours32).astype(np.float64)
        big = scale >= REL_FLOOR
        rel = diff[big] / scale[big]
        self.n += diff.size
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        self.max_rel = max(self.max_rel, float(rel.max(initial=0.0)))
        self.abs_bins += _bins(diff)
        self.rel_bins += _bins(rel)
        self.scale_bins += _bins(scale)
        self.front = _front(np.concatenate([self.front, np.stack([scale, diff], axis=1)]))

    def merge(self, other: Figures) -> Figures:
        return Figures(
            n=self.n + other.n,
            max_abs=max(self.max_abs, other.max_abs),
            max_rel=max(self.max_rel, other.max_rel),
            abs_bins=self.abs_bins + other.abs_bins,
            rel_bins=self.rel_bins + other.rel_bins,
            scale_bins=self.scale_bins + other.scale_bins,
            front=_front(np.concatenate([self.front, other.front])),
        )

    def atol_for(self, rtol: float) -> float:
        """The smallest atol under which every element seen has excess <= 1, given rtol."""
        return max(float((self.front[:, 1] - rtol * self.front[:, 0]).max(initial=0.0)), 0.0)

    def excess(self, tol: Tolerance) -> float:
        """The largest excess of any element seen under `tol` (what Tolerance.excess would have said at worst)."""
        return float((self.front[:, 1] / (tol.atol + tol.rtol * self.front[:, 0])).max(initial=0.0))

    def median_scale(self) -> float:
        return _percentile(self.scale_bins, 0.5, math.inf)

    def summary(self) -> dict[str, float]:
        return {
            "n": self.n,
            "max_abs": self.max_abs,
            "p999_abs": _percentile(self.abs_bins, 0.999, self.max_abs),
            "max_rel": self.max_rel,
            "p999_rel": _percentile(self.rel_bins, 0.999, self.max_rel),
            "median_abs_ours": self.median_scale(),
        }


@dataclasses.dataclass
class Sample:
    """A judged output kept for the perturbations: the last step of a prompt at one layer (or hop)."""

    key: int
    diff: np.ndarray  # theirs - ours, honest
    ours: np.ndarray
    update: np.ndarray | None = None  # what the layer added to its input (layers only)


@dataclasses.dataclass
class Tally:
    """Everything the referee measured of one backend in one quantisation."""

    figures: dict[str, dict[int, Figures]] = dataclasses.field(default_factory=dict)  # check -> layer or hop
    gaps: dict[str, list[float]] = dataclasses.field(default_factory=lambda: {"gap": [], "own_gap": [], "runner_up": []})
    layers: list[Sample] = dataclasses.field(default_factory=list)
    hops: list[Sample] = dataclasses.field(default_factory=list)

    def fig(self, check: str, key: int) -> Figures:
        return self.figures.setdefault(check, {}).setdefault(key, Figures())


class Referee:
    """The referee's runtimes for one quantisation (this process, 1 thread): the hops, every layer as a one-layer
    shard (as verification/layers.py builds them), and the numpy head."""

    def __init__(self, model: GGUFModel, quant: str) -> None:
        n_layers = model.config.n_layers
        blobs = [shard_bytes(model, quant, first, end) for first, end in parse_plan(PLAN, n_layers=n_layers)]
        self.sha256 = [hashlib.sha256(blob).hexdigest() for blob in blobs]
        self.hops = [ShardRuntime(blob) for blob in blobs]
        self.layers = [ShardRuntime(shard_bytes(model, quant, i, i + 1)) for i in range(n_layers)]
        self.embedding = np.asarray(model.embedding(), dtype=np.float32)
        table = self.embedding if model.tied_head else np.asarray(model.output_weight(), dtype=np.float32)
        self.head = (model.norm(None, "output_norm"), table)
        self.eps = model.config.rms_eps

    def judge(self, arrays: dict[str, np.ndarray], tally: Tally) -> None:
        """One prompt's transcript: every hop re-run step by step, every layer of it re-executed at every step."""
        steps = sum(1 for name in arrays if name.startswith("in_0_"))
        for hop, runtime in enumerate(self.hops):
            inputs = [arrays[f"in_{hop}_{t}"] for t in range(steps)]
            states = [arrays[f"lh_{hop}_{t}"] for t in range(steps)]
            for t, ours in referee.rerun(runtime, inputs, until=steps):
                self.judge_step(runtime, hop, arrays[f"out_{hop}_{t}"], states[t], ours, tally, last=t == steps - 1)
            self.judge_layers(runtime, inputs, states, tally)

    def judge_step(self, runtime: ShardRuntime, hop: int, output: np.ndarray, states: np.ndarray, ours: Any,
                   tally: Tally, *, last: bool) -> None:  # fmt: skip
        first = runtime.spec.first_layer
        for index in range(states.shape[0]):
            tally.fig("bisect", first + index).add(states[index], ours.layer_hidden[index])
        if not runtime.spec.has_head:
            recorded = output.astype(np.float16).astype(np.float32)  # what the server relayed
            tally.fig("hop", hop).add(recorded, ours.output)
            tally.fig("own", hop).add(recorded, states[-1][None])
            if last:
                tally.hops.append(Sample(hop, recorded - ours.output, ours.output))
            return
        theirs, logits = output[-1], ours.output[-1]
        token = int(np.argmax(theirs))
        top = np.argpartition(theirs, -TOP_LOGITS)[-TOP_LOGITS:]
        tally.fig("logits", hop).add(theirs[top], logits[top])
        own = referee.head_logits(self.head, states[-1][-1], eps=self.eps)
        tally.fig("own_logits", hop).add(theirs[top], own[top])
        second, best = np.partition(logits, -2)[-2:]
        tally.gaps["gap"].append(float(best - logits[token]))  # output_excess's numerator
        tally.gaps["own_gap"].append(float(own.max() - own[token]))
        tally.gaps["runner_up"].append(float(best - second))

    def judge_layers(self, runtime: ShardRuntime, inputs: list[np.ndarray], states: list[np.ndarray],
                     tally: Tally) -> None:  # fmt: skip
        first = runtime.spec.first_layer
        for index in range(len(runtime.layers)):
            before = inputs if index == 0 else [s[index - 1] for s in states]
            for t in range(len(states)):
                claimed = states[t][index]
                _, ours = referee.layer_excess(self.layers[first + index], before[: t + 1], claimed)
                tally.fig("layer", first + index).add(claimed, ours)
            # The last step: a decode step of one position, where a perturbation has the fewest elements to show in.
            update = ours - self.layer_input(before[-1])[-ours.shape[0] :]
            tally.layers.append(Sample(first + index, claimed - ours, ours, update))

    def layer_input(self, x: np.ndarray) -> np.ndarray:
        if x.dtype == np.int64:
            return self.embedding[x.reshape(-1)]
        return np.asarray(x, dtype=np.float32).reshape(-1, self.embedding.shape[1])


# --- the tolerance and what it catches ----------------------------------------------------------------------------


def round_up(x: float) -> float:
    """Up to two significant digits."""
    if x <= 0:
        return 0.0
    unit = 10.0 ** (math.floor(math.log10(x)) - 1)
    return float(f"{math.ceil(x / unit - 1e-9) * unit:.2g}")


def fit(figures: Figures, margin: float) -> tuple[Tolerance, dict[str, float]]:
    """For each rtol of the grid the smallest atol that covers every honest element; the pair with the smallest
    tolerance at the median |ours|; both times the margin, rounded up."""
    typical = figures.median_scale()
    _, rtol = min((figures.atol_for(r) + r * typical, r) for r in RTOLS)
    atol = figures.atol_for(rtol)
    fitted = Tolerance(rtol=round_up(rtol * margin), atol=round_up(max(atol * margin, ATOL_FLOOR)))
    return fitted, {"rtol": rtol, "atol": atol, "median_abs_ours": typical}


def merged(figures: Iterable[Figures]) -> Figures:
    total = Figures()
    for f in figures:
        total = total.merge(f)
    return total


def smallest(excess: Any, start: float = 1e-9) -> float:
    """The smallest size s >= start at which excess(s) > 1 (excess grows with s), by bisection in log space."""
    low, high = start, start
    while excess(high) <= 1:
        low, high = high, high * 10
        if high > 1e9:
            return math.inf
    for _ in range(30):
        middle = math.sqrt(low * high)
        low, high = (low, middle) if excess(middle) > 1 else (middle, high)
    return high


def spread(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {}
    return {"min": float(a.min()), "median": float(np.median(a)), "p90": float(np.quantile(a, 0.9)), "max": float(a.max())}


def perturbations(tallies: dict[tuple[str, str], Tally], layer: Tolerance, hop: Tolerance, gap: float) -> dict[str, Any]:
    """How large a lie must be to be caught, on the last (one-position decode) step of every prompt: gaussian noise
    of scale s on one layer's output or on a hop's output, one layer's update scaled by (1 + eps), a skipped layer,
    the runner-up token returned instead of the best."""
    rng = np.random.default_rng(0)
    noise, noise_rel, scaled, skipped, hop_noise, hop_rel = [], [], [], [], [], []
    for tally in tallies.values():
        for s in tally.layers:
            z = rng.standard_normal(s.ours.shape).astype(np.float32)
            claimed = s.ours + s.diff
            size = smallest(lambda x, c=claimed, z=z, o=s.ours: layer.excess(c + x * z, o))
            noise.append(size)
            noise_rel.append(size / float(np.sqrt(np.mean(s.ours.astype(np.float64) ** 2))))
            assert s.update is not None
            scaled.append(smallest(lambda e, c=claimed, u=s.update, o=s.ours: layer.excess(c + e * u, o)))
            skipped.append(layer.excess(claimed - s.update, s.ours))
        for s in tally.hops:
            z = rng.standard_normal(s.ours.shape).astype(np.float32)
            size = smallest(lambda x, c=s.ours + s.diff, z=z, o=s.ours: hop.excess(c + x * z, o))
            hop_noise.append(size)
            hop_rel.append(size / float(np.sqrt(np.mean(s.ours.astype(np.float64) ** 2))))
    runner_up = [g for t in tallies.values() for g in t.gaps["runner_up"]]
    return {
        "layer_noise_abs": spread(noise),
        "layer_noise_over_rms": spread(noise_rel),
        "layer_noise_over_rms_all": sorted(noise_rel),
        "layer_update_scaled_eps": spread(scaled),
        "layer_skipped_excess": spread(skipped),
        "hop_noise_abs": spread(hop_noise),
        "hop_noise_over_rms": spread(hop_rel),
        "runner_up_gap": spread(runner_up),
        "runner_up_caught_fraction": float(np.mean([g > gap for g in runner_up])) if runner_up else None,
        "samples": {"layer": len(noise), "hop": len(hop_noise), "head_steps": len(runner_up)},
    }


def analyse(tallies: dict[tuple[str, str], Tally], margin: float) -> dict[str, Any]:
    """The fitted constants, every figure with its honest excess under the constants in force and the fitted ones,
    and what each set catches."""
    pools = {
        "LAYER": [f for t in tallies.values() for f in t.figures.get("layer", {}).values()],
        "HOP": [f for t in tallies.values() for c in ("hop", "own") for f in t.figures.get(c, {}).values()],
        "LOGITS": [f for t in tallies.values() for f in t.figures.get("logits", {}).values()],
    }
    fitted, raw = {}, {}
    for name, pool in pools.items():
        fitted[name], raw[name] = fit(merged(pool), margin)
    worst_logit = max(f.max_abs for t in tallies.values() for c in ("logits", "own_logits") for f in t.figures[c].values())
    worst_gap = max(g for t in tallies.values() for k in ("gap", "own_gap") for g in t.gaps[k])
    raw["LOGIT_GAP"] = {"largest_gap": worst_gap, "twice_largest_logit_difference": 2 * worst_logit}
    logit_gap = round_up(margin * max(worst_gap, 2 * worst_logit))
    in_force = {"LAYER": tolerance.LAYER, "HOP": tolerance.HOP, "LOGITS": tolerance.LOGITS}
    figures: dict[str, Any] = {}
    for (quant, backend), tally in tallies.items():
        for check, per_key in sorted(tally.figures.items()):
            name = CHECKS.get(check)
            for key, f in sorted(per_key.items()):
                entry = f.summary()
                if name is not None:
                    entry |= {"excess_in_force": f.excess(in_force[name]), "excess_fitted": f.excess(fitted[name])}
                figures.setdefault(quant, {}).setdefault(backend, {}).setdefault(check, {})[str(key)] = entry
        gaps = figures[quant][backend]["gaps"] = {k: spread(v) for k, v in tally.gaps.items()}
        gaps["excess_in_force"] = max(gaps["gap"]["max"], gaps["own_gap"]["max"]) / tolerance.LOGIT_GAP
        gaps["excess_fitted"] = max(gaps["gap"]["max"], gaps["own_gap"]["max"]) / logit_gap
    return {
        "constants": {
            "margin": margin,
            "in_force": tolerance.describe(),
            "fitted": {"layer": dataclasses.asdict(fitted["LAYER"]), "hop": dataclasses.asdict(fitted["HOP"]),
                       "logit_gap": logit_gap, "logits": dataclasses.asdict(fitted["LOGITS"])},  # fmt: skip
            "raw_before_margin": raw,
        },
        "figures": figures,
        "perturbations": {
            "in_force": perturbations(tallies, tolerance.LAYER, tolerance.HOP, tolerance.LOGIT_GAP),
            "fitted": perturbations(tallies, fitted["LAYER"], fitted["HOP"], logit_gap),
        },
    }
