"""The provider tab against native ONNX Runtime on the same inputs: how far honest backends disagree. Used by
bench/browser.py (the figures in docs/tolerance.md) and by the browser tests, which check each served shard against
the tolerance documented there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from inference.runtime import ShardRuntime
from market.localstack import LocalMarket
from worker_web.testing.tab_driver import BrowserTab

# docs/tolerance.md: more than 10x over every honest difference measured between the tab (WASM) and native ORT.
HIDDEN_RTOL, HIDDEN_ATOL = 1e-4, 1e-2  # hidden states and per-layer hidden states, against the tensor's largest value
LOGITS_ATOL = 1e-3


def within_tolerance(result: dict[str, Any], *, has_head: bool) -> bool:
    """Whether a `compare` result stays inside the documented tolerance (largest differences against the largest
    value of the tensor: a bound on the element-wise rule, which looks at each element's own value)."""
    output_limit = LOGITS_ATOL if has_head else HIDDEN_ATOL + HIDDEN_RTOL * result["output_scale"]
    layers_limit = HIDDEN_ATOL + HIDDEN_RTOL * result["layer_hidden_scale"]
    return bool(result["output"] <= output_limit and result["layer_hidden"] <= layers_limit)


def descriptors(market: LocalMarket, token: str, quant: str, config: Any) -> list[dict[str, Any]]:
    """The protocol's shard descriptors of the imported shards of one quantisation, in pipeline order."""
    _, models = market.api("GET", "/api/models/", token=token)
    n_layers, hidden, vocab = config.n_layers, config.hidden, config.vocab
    shards = []
    for shard in next(m for m in models if m["quant"] == quant)["shards"]:
        first, end = (int(x) for x in shard["layers"].split("-"))
        shards.append(
            {
                "id": shard["id"],
                "sha256": shard["sha256"],
                "url": f"/shards/{shard['sha256']}/",
                "size": shard["bytes"],
                "first_layer": first,
                "end_layer": end,
                "has_embedding": first == 0,
                "has_head": end == n_layers,
                "hidden": hidden,
                "vocab": vocab,
            }
        )
    return sorted(shards, key=lambda s: s["first_layer"])


def native_runtimes(media: Path, shards: list[dict[str, Any]]) -> list[ShardRuntime]:
    return [ShardRuntime(next(media.rglob(f"{s['sha256']}*")), sha256=s["sha256"]) for s in shards]


def record_chain(chain: list[ShardRuntime], prompt: list[int], tokens: int) -> list[list[np.ndarray]]:
    """Greedy generation through the native chain; every shard's input at every step, as the server relays them
    (token ids to the first shard, float16 hidden states to the others)."""
    inputs: list[list[np.ndarray]] = [[] for _ in chain]
    for runtime in chain:
        runtime.open("bench")
    step_input: np.ndarray = np.array([prompt], dtype=np.int64)
    for _ in range(tokens + 1):
        value = step_input
        for index, runtime in enumerate(chain):
            inputs[index].append(value)
            output = runtime.step("bench", value).output
            value = output if runtime.spec.has_head else output.astype(np.float16)
        step_input = np.array([[int(np.argmax(value[0]))]], dtype=np.int64)
    for runtime in chain:
        runtime.close("bench")
    return inputs


def compare(tab: BrowserTab, shard: dict[str, Any], runtime: ShardRuntime, inputs: list[np.ndarray]) -> dict[str, Any]:
    """The tab and native ONNX Runtime on the same inputs: largest |difference| of each output."""
    steps = [
        (
            "int64" if x.dtype == np.int64 else "float32",
            list(x.shape),
            x.astype(x.dtype if x.dtype == np.int64 else np.float32).tobytes(),
        )
        for x in inputs
    ]
    browser = tab.evaluate(shard, steps)
    runtime.open("compare")
    worst = {"output": 0.0, "layer_hidden": 0.0, "output_scale": 0.0, "layer_hidden_scale": 0.0}
    argmax_agrees = True
    for x, got in zip(inputs, browser, strict=True):
        native = runtime.step("compare", x)
        theirs = np.frombuffer(got["output"], dtype=np.float32).reshape(native.output.shape)
        layers = np.frombuffer(got["layer_hidden"], dtype=np.float32).reshape(native.layer_hidden.shape)
        worst["output"] = max(worst["output"], float(np.abs(theirs - native.output).max()))
        worst["layer_hidden"] = max(worst["layer_hidden"], float(np.abs(layers - native.layer_hidden).max()))
        worst["output_scale"] = max(worst["output_scale"], float(np.abs(native.output).max()))
        worst["layer_hidden_scale"] = max(worst["layer_hidden_scale"], float(np.abs(native.layer_hidden).max()))
        if runtime.spec.has_head:
            argmax_agrees &= int(np.argmax(theirs[0])) == int(np.argmax(native.output[0]))
    runtime.close("compare")
    return worst | {"greedy_token_agrees": argmax_agrees if runtime.spec.has_head else None}
