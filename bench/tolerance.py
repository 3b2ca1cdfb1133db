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
layer's output, a layer's update scaled or skipped, noise on a hop's output, the runner-up token) are judged. The fit
also takes the first native backend's q4 transcripts judged with f32 shards ("cross-kernel": the same Q4_1 weights
dequantised, other kernels), a stand-in for a CPU whose kernels differ from every backend measured here.

    .venv/bin/python bench/tolerance.py [--prompts 12] [--steps 16] [--quants q4,f32] [--margin 8]
        [--backends native-2,native-4,wasm] [--wasm-prompts 12] [--cross-prompts 6]

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
TOP_LOGITS = 16  # as verification/services/transcripts.py keeps a sampled head (importing it needs Django)
REL_FLOOR = 1.0  # relative figures |d| / |ours| only where |ours| >= 1: below, atol rules
EDGES = 10.0 ** np.arange(-12.0, 4.005, 0.01)  # log bins (2.3 % wide) for percentiles of |d| and |d| / |ours|
RTOLS = [0.0] + [m * 10.0**k for k in range(-9, 0) for m in (1.0, 2.0, 5.0)]
ATOL_FLOOR = 1e-6  # a fitted atol is never 0: an element whose |ours| is 0 needs some room
CURVE = 10.0 ** np.arange(-5.0, -1.45, 0.05)  # noise sizes (std / RMS) at which the fraction caught is reported
CHECKS = {"layer": "LAYER", "bisect": "LAYER", "hop": "HOP", "own": "HOP", "logits": "LOGITS"}
USER = "user"
LONG = (  # a long prompt (about 400 tokens): does the disagreement grow with the context?
    "Read these notes from a town meeting and list the three decisions that were taken.\n\n"
    "The meeting opened at seven with forty residents present. The chair reminded everyone that the agenda had "
    "been posted a week earlier and that questions from the floor would be taken after each item. The first item "
    "was the footbridge over the mill stream, closed since the spring floods. The engineer's report found the "
    "timber deck rotten in places but the stone piers sound. Two options were presented: repair the deck for about "
    "eighteen thousand, or replace the whole bridge with a steel span for about ninety thousand. Several residents "
    "spoke for the cheaper repair, pointing out that the piers had stood for a century; others worried that a "
    "repaired deck would need work again within ten years. After a long discussion the council voted seven to two "
    "to repair the deck this summer and to set aside a small sum each year toward a future replacement.\n\n"
    "The second item was the library's opening hours. The librarian explained that evening visits had doubled "
    "since the reading room was renovated, while Monday mornings were almost empty. She proposed closing on Monday "
    "mornings and staying open until nine on Tuesdays and Thursdays, at no extra cost. A parent asked whether the "
    "children's story hour would move; it would stay on Saturday. The proposal was accepted without objection.\n\n"
    "The third item concerned parking on the market square. Shopkeepers complained that commuters left cars there "
    "all day, leaving no room for customers. A two-hour limit on weekdays was proposed, with residents' permits for "
    "those living on the square. A resident asked how the limit would be enforced; the chair answered that the "
    "town warden would check twice a day during a trial of six months. The limit was approved, to be reviewed "
    "after the trial. Under any other business, a resident thanked the volunteers who had cleared the riverbank, "
    "and the meeting closed at half past nine."
)
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
    [{"role": USER, "content": LONG}],
    [{"role": USER, "content": "List the planets of the solar system, closest to the sun first."}],
    [{"role": USER, "content": "Why is the sky blue? 🌤️ Keep it short."}],
    [{"role": USER, "content": "SELECT name FROM users WHERE age > 30; -- what does this SQL query do?"}],
]


# --- the providers -----------------------------------------------------------------------------------------------


def encode_prompts(model: GGUFModel, count: int) -> list[list[int]]:
    tokenizer = ChatTokenizer.from_gguf(model)
    return [tokenizer.encode_chat(messages) for messages in PROMPTS[:count]]


def shard_bytes(model: GGUFModel, quant: str, first: int, end: int) -> bytes:
    return bytes(build_shard(model, ShardSpec(MODEL, quant, first, end, model.config.n_layers)).SerializeToString())


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
            arrays |= {
                f"in_{hop}_{step}": value,
                f"out_{hop}_{step}": result.output,
                f"lh_{hop}_{step}": result.layer_hidden,
            }
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
    from worker_web.testing.tab_driver import BrowserTab, chromium_context
    from worker_web.testing.tab_parity import descriptors, native_runtimes, record_chain

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
        ("int64", list(x.shape), x.tobytes())
        if x.dtype == np.int64
        else ("float32", list(x.shape), x.astype(np.float32).tobytes())
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
    return np.asarray(np.bincount(np.searchsorted(EDGES, values), minlength=len(EDGES) + 1), dtype=np.int64)


def _front(points: np.ndarray) -> np.ndarray:
    """The (|ours|, |d|) points that no other dominates (|ours| as small or smaller, |d| as large or larger): for
    every atol, rtol >= 0 the largest |d| / (atol + rtol·|ours|) lies on them, so they stand in for millions."""
    points = points[points[:, 1] > 0]
    if len(points) == 0:
        return points
    points = points[np.lexsort((-points[:, 1], points[:, 0]))]
    best = np.maximum.accumulate(points[:, 1])
    keep = np.concatenate([[True], points[1:, 1] > best[:-1]])
    return np.asarray(points[keep])


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
    gaps: dict[str, list[float]] = dataclasses.field(
        default_factory=lambda: {"gap": [], "own_gap": [], "runner_up": []}
    )
    layers: list[Sample] = dataclasses.field(default_factory=list)
    hops: list[Sample] = dataclasses.field(default_factory=list)
    prompts: list[dict[str, float]] = dataclasses.field(default_factory=list)  # per prompt: positions, largest |d|

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
        steps, largest = sum(1 for name in arrays if name.startswith("in_0_")), 0.0
        for hop, runtime in enumerate(self.hops):
            inputs = [arrays[f"in_{hop}_{t}"] for t in range(steps)]
            states = [arrays[f"lh_{hop}_{t}"] for t in range(steps)]
            for t, ours in referee.rerun(runtime, inputs, until=steps):
                self.judge_step(runtime, hop, arrays[f"out_{hop}_{t}"], states[t], ours, tally, last=t == steps - 1)
            largest = max(largest, self.judge_layers(runtime, inputs, states, tally))
        positions = int(np.asarray(arrays["in_0_0"]).shape[1]) + steps - 1
        tally.prompts.append({"positions": positions, "layer_max_abs": largest})

    def judge_step(
        self,
        runtime: ShardRuntime,
        hop: int,
        output: np.ndarray,
        states: np.ndarray,
        ours: Any,
        tally: Tally,
        *,
        last: bool,
    ) -> None:
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

    def judge_layers(
        self, runtime: ShardRuntime, inputs: list[np.ndarray], states: list[np.ndarray], tally: Tally
    ) -> float:
        """Every layer of the hop re-executed at every step; returns the largest |d| seen."""
        first, largest = runtime.spec.first_layer, 0.0
        for index in range(len(runtime.layers)):
            before = inputs if index == 0 else [s[index - 1] for s in states]
            for t in range(len(states)):
                claimed = states[t][index]
                _, ours = referee.layer_excess(self.layers[first + index], before[: t + 1], claimed)
                tally.fig("layer", first + index).add(claimed, ours)
                largest = max(largest, float(np.abs(claimed - ours).max()))
            # The last step: a decode step of one position, where a perturbation has the fewest elements to show in.
            update = ours - self.layer_input(before[-1])[-ours.shape[0] :]
            tally.layers.append(Sample(first + index, claimed - ours, ours, update))
        return largest

    def layer_input(self, x: np.ndarray) -> np.ndarray:
        if x.dtype == np.int64:
            return np.asarray(self.embedding[x.reshape(-1)])
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
    return {
        "min": float(a.min()),
        "median": float(np.median(a)),
        "p90": float(np.quantile(a, 0.9)),
        "max": float(a.max()),
    }


def perturbations(
    tallies: dict[tuple[str, str], Tally], layer: Tolerance, hop: Tolerance, gap: float
) -> dict[str, Any]:
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
        "layer_noise_caught": {
            "std_over_rms": [float(x) for x in CURVE],
            "fraction": [float(np.mean(np.asarray(noise_rel) <= x)) if noise_rel else 0.0 for x in CURVE],
        },
        "layer_update_scaled_eps": spread(scaled),
        "layer_skipped_excess": spread(skipped),
        "hop_noise_abs": spread(hop_noise),
        "hop_noise_over_rms": spread(hop_rel),
        "runner_up_gap": spread(runner_up),
        "runner_up_caught_fraction": float(np.mean([g > gap for g in runner_up])) if runner_up else None,
        "samples": {"layer": len(noise), "hop": len(hop_noise), "head_steps": len(runner_up)},
    }


def worst(tally: Tally, tols: dict[str, Tolerance], gap: float) -> dict[str, float]:
    """The largest excess of each check over a tally (every prompt, step, layer), under the given constants."""
    out = {
        check: max(f.excess(tols[CHECKS[check]]) for f in per_key.values())
        for check, per_key in tally.figures.items()
        if check in CHECKS
    }
    return out | {"gap": max(tally.gaps["gap"] + tally.gaps["own_gap"]) / gap}


def analyse(every: dict[tuple[str, str], Tally], margin: float) -> dict[str, Any]:
    """The fitted constants (from every tally, the cross-kernel one too), every figure with its honest excess under
    the constants in force and the fitted ones, and what each set catches."""
    tallies = {key: tally for key, tally in every.items() if "-as-" not in key[0]}
    cross = {f"{q} ({b})": tally for (q, b), tally in every.items() if "-as-" in q}
    pools = {
        "LAYER": [f for t in every.values() for f in t.figures.get("layer", {}).values()],
        "HOP": [f for t in every.values() for c in ("hop", "own") for f in t.figures.get(c, {}).values()],
        "LOGITS": [f for t in every.values() for f in t.figures.get("logits", {}).values()],
    }
    fitted: dict[str, Tolerance] = {}
    raw: dict[str, dict[str, float]] = {}
    for name, pool in pools.items():
        fitted[name], raw[name] = fit(merged(pool), margin)
    worst_logit = max(
        f.max_abs for t in every.values() for c in ("logits", "own_logits") for f in t.figures[c].values()
    )
    worst_gap = max(g for t in every.values() for k in ("gap", "own_gap") for g in t.gaps[k])
    raw["LOGIT_GAP"] = {"largest_gap": worst_gap, "twice_largest_logit_difference": 2 * worst_logit}
    logit_gap = round_up(margin * max(worst_gap, 2 * worst_logit))
    in_force = {"LAYER": tolerance.LAYER, "HOP": tolerance.HOP, "LOGITS": tolerance.LOGITS}
    figures: dict[str, Any] = {}
    for (quant, backend), tally in tallies.items():
        for check, per_key in sorted(tally.figures.items()):
            constant = CHECKS.get(check)
            for key, f in sorted(per_key.items()):
                entry = f.summary()
                if constant is not None:
                    entry |= {
                        "excess_in_force": f.excess(in_force[constant]),
                        "excess_fitted": f.excess(fitted[constant]),
                    }
                figures.setdefault(quant, {}).setdefault(backend, {}).setdefault(check, {})[str(key)] = entry
        gaps: dict[str, Any] = {k: spread(v) for k, v in tally.gaps.items()}
        figures[quant][backend]["gaps"] = gaps
        gaps["excess_in_force"] = max(gaps["gap"]["max"], gaps["own_gap"]["max"]) / tolerance.LOGIT_GAP
        gaps["excess_fitted"] = max(gaps["gap"]["max"], gaps["own_gap"]["max"]) / logit_gap
    return {
        "constants": {
            "margin": margin,
            "in_force": tolerance.describe(),
            "fitted": {
                "layer": dataclasses.asdict(fitted["LAYER"]),
                "hop": dataclasses.asdict(fitted["HOP"]),
                "logit_gap": logit_gap,
                "logits": dataclasses.asdict(fitted["LOGITS"]),
            },
            "raw_before_margin": raw,
        },
        "figures": figures,
        "per_prompt": {q: {b: t.prompts for (q2, b), t in tallies.items() if q2 == q} for q in figures},
        "perturbations": {
            "in_force": perturbations(tallies, tolerance.LAYER, tolerance.HOP, tolerance.LOGIT_GAP),
            "fitted": perturbations(tallies, fitted["LAYER"], fitted["HOP"], logit_gap),
        },
        "cross_kernel": {
            name: {
                "prompts": len(tally.prompts),
                "max_abs": {c: max(f.max_abs for f in per_key.values()) for c, per_key in tally.figures.items()},
                "in_force": worst(tally, in_force, tolerance.LOGIT_GAP),
                "fitted": worst(tally, fitted, logit_gap),
            }
            for name, tally in cross.items()
        },
    }


# --- the run -------------------------------------------------------------------------------------------------------


def collect(args: argparse.Namespace, work: Path) -> tuple[dict[tuple[str, str], Tally], dict[str, Any]]:
    """Every backend's transcripts (providers first, one at a time), then the referee's judgement of them."""
    model = GGUFModel(smollm2_path())
    prompts = encode_prompts(model, args.prompts)
    info: dict[str, Any] = {"prompt_tokens": [len(p) for p in prompts], "provider_seconds": {}}
    for backend in args.backends.split(","):
        started = time.time()
        if backend == "wasm":
            info["wasm"] = provide_wasm(args, model, prompts, work)
        elif backend.startswith("native-") and backend[7:].isdigit():
            argv = [sys.executable, __file__, "--provide-threads", backend[7:], "--work", str(work / backend)]
            argv += ["--prompts", str(args.prompts), "--steps", str(args.steps), "--quants", args.quants]
            subprocess.run(argv, check=True)
        else:
            raise SystemExit(f"unknown backend {backend!r}: native-<threads> or wasm")
        info["provider_seconds"][backend] = round(time.time() - started, 1)
        print(f"{backend}: transcripts in {info['provider_seconds'][backend]} s", file=sys.stderr, flush=True)
    tallies: dict[tuple[str, str], Tally] = {}
    info["referee_seconds"], info["shard_sha256"] = {}, {}
    quants, natives = args.quants.split(","), [b for b in args.backends.split(",") if b.startswith("native-")]
    for quant in quants:
        judge = Referee(model, quant)
        info["shard_sha256"][quant] = judge.sha256
        for backend in args.backends.split(","):
            started = time.time()
            tallies[(quant, backend)] = judge_all(judge, work / backend / quant, len(prompts))
            info["referee_seconds"][f"{quant}/{backend}"] = round(time.time() - started, 1)
            print(f"{quant}/{backend}: judged in {info['referee_seconds'][f'{quant}/{backend}']} s", file=sys.stderr)
        if quant == "f32" and "q4" in quants and natives and args.cross_prompts > 0:
            # The f32 shards hold the GGUF's Q4_1 weights dequantised: the same numbers as q4, other kernels (MatMul
            # against MatMulNBits). Judging q4 work with f32 shards stands in for a CPU whose kernels differ.
            tallies[("q4-as-f32", natives[0])] = judge_all(judge, work / natives[0] / "q4", args.cross_prompts)
        del judge
    if "wasm" in info:
        info["wasm"]["same_shards_as_referee"] = info["wasm"]["shard_sha256"] == info["shard_sha256"]
    return tallies, info


def judge_all(judge: Referee, folder: Path, count: int) -> Tally:
    tally = Tally()
    for path in sorted(folder.glob("*.npz"), key=lambda p: int(p.stem))[:count]:
        with np.load(path) as saved:
            judge.judge({name: saved[name] for name in saved.files}, tally)
    return tally


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ((raw, excess), (checks, caught)) = plt.subplots(2, 2, figsize=(14, 9))
    styles = {"q4": "-", "f32": "--"}
    for quant, per_backend in results["figures"].items():
        for backend, per_check in per_backend.items():
            layers = sorted(per_check["layer"], key=int)
            raw.plot(
                [int(k) for k in layers],
                [per_check["layer"][k]["max_abs"] for k in layers],
                styles.get(quant, ":"),
                marker=".",
                label=f"{quant} {backend}",
            )
            excess.plot(
                [int(k) for k in layers],
                [per_check["layer"][k]["excess_fitted"] for k in layers],
                styles.get(quant, ":"),
                marker=".",
                label=f"{quant} {backend}",
            )
    raw.set_yscale("log")
    raw.set_xlabel("layer")
    raw.set_ylabel("max |provider - referee|, layer re-executed")
    raw.set_title("Honest disagreement of one layer (the proof)")
    raw.legend(fontsize="x-small", ncol=2)
    margin = results["constants"]["margin"]
    for level, label in ((1.0, "tolerance (excess 1)"), (1.0 / margin, f"1 / margin ({margin:g})")):
        excess.axhline(level, color="red" if level == 1 else "grey", linestyle=":", label=label)
    excess.set_yscale("log")
    excess.set_xlabel("layer")
    excess.set_ylabel("largest honest excess, fitted LAYER")
    excess.set_title("Honest excess per layer under the fitted tolerance")
    excess.legend(fontsize="x-small", ncol=2, loc="lower right")
    names = ["layer", "bisect", "hop", "own", "logits", "gaps"]
    columns = [(q, b) for q, per_backend in results["figures"].items() for b in per_backend]
    x = np.arange(len(names))
    for offset, (quant, backend) in enumerate(columns):
        per_check = results["figures"][quant][backend]
        values = [
            max(e["excess_fitted"] for e in per_check[c].values()) if c != "gaps" else per_check[c]["excess_fitted"]
            for c in names
        ]
        checks.bar(
            x + (offset - len(columns) / 2 + 0.5) * 0.8 / len(columns),
            values,
            0.8 / len(columns),
            label=f"{quant} {backend}",
        )
    checks.axhline(1.0, color="red", linestyle=":")
    checks.set_yscale("log")
    checks.set_xticks(x, names)
    checks.set_ylabel("largest honest excess, fitted constants")
    checks.set_title("Every check, every backend (0, bit-identical, not drawn; bisect only steers)")
    checks.legend(fontsize="x-small", ncol=2)
    for which, style in (("fitted", "-"), ("in_force", "--")):  # the same curve once the fitted constants are in force
        curve = results["perturbations"][which]["layer_noise_caught"]
        caught.plot(curve["std_over_rms"], curve["fraction"], style, label=f"{which.replace('_', ' ')} LAYER")
    caught.set_xscale("log")
    caught.set_xlabel("gaussian noise on one layer's output, std / RMS of the output")
    caught.set_ylabel("fraction of (prompt, layer, backend) caught")
    caught.set_title("A perturbed layer (one decode position) against the tolerance")
    caught.legend(fontsize="small")
    fig.suptitle(f"SmolLM2-135M, shards {PLAN}: honest disagreement against the referee (native ORT, 1 thread)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _g(x: float | None) -> str:
    return "–" if x is None else f"{x:.2g}" if x != 0 else "0"


def markdown(results: dict[str, Any]) -> str:
    """The tables of docs/tolerance.md."""
    figures, quants = results["figures"], list(results["figures"])
    backends = list(figures[quants[0]])
    head = " | ".join(f"{q} max \\|d\\| | {q} p99.9 \\|d\\| | {q} max rel" for q in quants)
    lines = [f"| check | backend | {head} | honest excess, fitted |", "|---|---|" + "---|" * (3 * len(quants) + 1)]
    for check in ("layer", "bisect", "hop", "own", "logits", "own_logits"):
        for backend in backends:
            cells, worst = [], 0.0
            for q in quants:
                entries = figures[q][backend][check].values()
                cells += [_g(max(e[k] for e in entries)) for k in ("max_abs", "p999_abs", "max_rel")]
                worst = max([worst, *(e.get("excess_fitted", 0.0) for e in entries)])
            lines.append(f"| {check} | {backend} | {' | '.join(cells)} | {_g(worst) if check in CHECKS else '–'} |")
    lines += [
        "",
        f"| layer | {head} | honest excess, fitted | bisect max \\|d\\| |",
        "|---|" + "---|" * (3 * len(quants) + 2),
    ]
    for layer in sorted(figures[quants[0]][backends[0]]["layer"], key=int):
        cells, worst, bisect = [], 0.0, 0.0
        for q in quants:
            entries = [figures[q][b]["layer"][layer] for b in backends]
            cells += [_g(max(e[k] for e in entries)) for k in ("max_abs", "p999_abs", "max_rel")]
            worst = max([worst, *(e["excess_fitted"] for e in entries)])
            bisect = max([bisect, *(figures[q][b]["bisect"][layer]["max_abs"] for b in backends)])
        lines.append(f"| {layer} | {' | '.join(cells)} | {_g(worst)} | {_g(bisect)} |")
    lines += [
        "",
        "| quant | backend | largest gap | largest own gap | honest excess, in force | fitted |",
        "|---|---|---|---|---|---|",
    ]
    for q in quants:
        for b in backends:
            g = figures[q][b]["gaps"]
            row = [g["gap"]["max"], g["own_gap"]["max"], g["excess_in_force"], g["excess_fitted"]]
            lines.append(f"| {q} | {b} | {' | '.join(_g(x) for x in row)} |")
    lines += [
        "",
        "| perturbation (last decode step) | in force: median | max | fitted: median | max |",
        "|---|---|---|---|---|",
    ]
    p = results["perturbations"]
    for key, label in (
        ("layer_noise_abs", "noise on one layer's output, std (absolute)"),
        ("layer_noise_over_rms", "the same, std / RMS of the layer's output"),
        ("layer_update_scaled_eps", "one layer's update scaled by 1 + eps: eps"),
        ("layer_skipped_excess", "a skipped layer: its excess (min, not max)"),
        ("hop_noise_abs", "noise on a hop's output, std (absolute)"),
        ("hop_noise_over_rms", "the same, std / RMS of the hop's output"),
    ):
        low = "min" if key == "layer_skipped_excess" else "max"
        row = [p[w][key].get(k) for w in ("in_force", "fitted") for k in ("median", low)]
        lines.append(f"| {label} | {' | '.join(_g(x) for x in row)} |")
    runner_up = [p[w]["runner_up_caught_fraction"] for w in ("in_force", "fitted")]
    lines.append(
        f"| the runner-up token returned: fraction of steps caught | {_g(runner_up[0])} | | {_g(runner_up[1])} | |"
    )
    for name, cross in results["cross_kernel"].items():
        lines += [
            "",
            f"| {name} judged by f32 shards, {cross['prompts']} prompts | max \\|d\\| | excess, in force | fitted |",
        ]
        lines.append("|---|---|---|---|")
        for check in (*CHECKS, "gap"):
            row = [cross["max_abs"].get(check), cross["in_force"][check], cross["fitted"][check]]
            lines.append(f"| {check} | {' | '.join(_g(x) for x in row)} |")
    lines += ["", "| prompt tokens | " + " | ".join(f"{q} {b}" for q in quants for b in backends) + " |"]
    lines.append("|---|" + "---|" * (len(quants) * len(backends)))
    for index, tokens in enumerate(results["prompt_tokens"]):
        cells = []
        for q in quants:
            for b in backends:
                rows = results["per_prompt"][q][b]
                cells.append(_g(rows[index]["layer_max_abs"]) if index < len(rows) else "–")
        lines.append(f"| {tokens} | {' | '.join(cells)} |")
    return "\n".join(lines)


def rounded(value: Any) -> Any:
    """Floats to 4 significant digits, for a JSON file people read."""
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=12, help=f"chat prompts, at most {len(PROMPTS)}")
    parser.add_argument("--steps", type=int, default=16, help="greedy decode steps per prompt after the prefill")
    parser.add_argument("--backends", default="native-2,native-4,wasm", help="native-<threads> or wasm")
    parser.add_argument("--quants", default="q4,f32")
    parser.add_argument("--wasm-prompts", type=int, default=12, help="prompts the tab runs (it is the slow one)")
    parser.add_argument("--margin", type=float, default=8.0, help="fitted constants = largest honest figure x margin")
    parser.add_argument("--cross-prompts", type=int, default=6, help="q4 transcripts judged with f32 shards")
    parser.add_argument("--provide-threads", type=int, help=argparse.SUPPRESS)  # the native provider process
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.provide_threads is not None:
        provide_native(args)
        return
    os.environ.pop("REDIS_URL", None)
    configure_threads(1)  # the referee: native ONNX Runtime on one thread
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-tolerance-") as work:
        tallies, info = collect(args, Path(work))
    results = {
        "benchmark": "tolerance",
        "model": f"SmolLM2-135M-Instruct, shards {PLAN}",
        "machine": {"cpus": os.cpu_count(), "referee": "native onnxruntime, 1 thread"},
        "prompts": min(args.prompts, len(PROMPTS)),
        "decode_steps_per_prompt": args.steps,
        "backends": args.backends.split(","),
        "quants": args.quants.split(","),
        **info,
        **analyse(tallies, args.margin),
        "seconds": round(time.time() - started, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tolerance.json").write_text(json.dumps(rounded(results), indent=1) + "\n")
    plot(results, RESULTS / "tolerance.png")
    print(json.dumps(results["constants"], indent=2))
    print(markdown(results))
    fitted = results["constants"]["fitted"]
    print(f"fitted (margin {args.margin:g}): {fitted}; {results['seconds']} s")


if __name__ == "__main__":
    main()
