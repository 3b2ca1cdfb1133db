"""The GPU bench's side of the provider tab (bench/webgpu.py): a page that starts the tab's own Web Worker and hands
it commands, a loopback server for it, a headless Chromium on it, and the measurements against native ONNX Runtime.
Standard library, numpy and onnxruntime only, so it runs on the GPU machine as it is."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import queue
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inference.runtime import ShardRuntime  # noqa: E402
from verification.tolerance import LAYER, LOGITS  # noqa: E402

FLAGS = [
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
# The configuration that gave the page NVIDIA's adapter on that machine (issue 19); without
# --disable-vulkan-surface Vulkan fails to start and the page gets SwiftShader's fallback adapter.
WEBGPU_FLAGS = [
    "--enable-unsafe-webgpu",
    "--enable-features=Vulkan",
    "--use-vulkan=native",
    "--use-angle=vulkan",
    "--ignore-gpu-blocklist",
    "--disable-vulkan-surface",
]
WASM_FLAGS = ["--disable-gpu"]


# --- there: the page, the server, the browser ----------------------------------------------------------------------

PAGE = """<!doctype html><meta charset="utf-8"><title>provider tab, bench</title><script type="module">
const worker = new Worker("/static/worker_web/provider-worker.js", { type: "module" });
const pending = new Map(); let next = 0; let device = null;
worker.onmessage = (event) => {
  const m = event.data;
  if (m.type === "reply") {
    const p = pending.get(m.id); pending.delete(m.id);
    m.error ? p.reject(new Error(m.error)) : p.resolve(m.result);
  }
  else if (m.type === "device") device = m;
  else if (m.type === "log" || m.type === "warning") console.log(`${m.type}: ${m.text}`);
};
const call = (command, args) => new Promise((resolve, reject) => {
  const id = ++next; pending.set(id, { resolve, reject }); worker.postMessage({ id, command, args });
});
const toB64 = (buffer) => { const b = new Uint8Array(buffer); let t = "";
  for (let i = 0; i < b.length; i += 0x8000) t += String.fromCharCode(...b.subarray(i, i + 0x8000)); return btoa(t); };
const encode = (v) => v instanceof ArrayBuffer ? { b64: toB64(v) } : Array.isArray(v) ? v.map(encode)
  : v && typeof v === "object" ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, encode(x)])) : v;
const decode = (v) => v && typeof v === "object" && "b64" in v
  ? Uint8Array.from(atob(v.b64), (c) => c.charCodeAt(0)).buffer : Array.isArray(v) ? v.map(decode)
  : v && typeof v === "object" ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, decode(x)])) : v;
const post = (path, body) => fetch(path, { method: "POST", body: JSON.stringify(body) });
try {
  let gpu = null;
  if (navigator.gpu) {
    const a = await navigator.gpu.requestAdapter();
    const i = a && a.info;
    if (a) gpu = { features: [...a.features].sort(), info: i ? { vendor: i.vendor, architecture: i.architecture,
      device: i.device, description: i.description, isFallbackAdapter: i.isFallbackAdapter } : null,
      maxBufferSize: a.limits.maxBufferSize, maxStorageBufferBindingSize: a.limits.maxStorageBufferBindingSize };
  }
  const query = new URLSearchParams(location.search);
  const kvOnGpu = query.get("kvOnGpu") !== "0";
  const socketPath = query.get("socket") || "/ws/provider/"; // the protocol run's server (bench/webgpu_protocol.py)
  const ortBase = "/static/onnxruntime-web/";
  await call("init", { ortBase, socketPath, benchmarkShard: null, kvOnGpu });
  await post("/hello", { device, gpu, isolated: self.crossOriginIsolated, userAgent: navigator.userAgent });
  for (;;) {
    const job = await (await fetch("/job", { cache: "no-store" })).json();
    if (job.command === "done") break;
    try {
      await post("/result", { result: encode(await call(job.command, decode(job.args))) });
    }
    catch (error) { await post("/result", { error: String(error.message || error) }); }
  }
} catch (error) { await post("/hello", { error: String(error.stack || error) }); }
</script>"""

TYPES = {
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".wasm": "application/wasm",
    ".html": "text/html",
    ".onnx": "application/octet-stream",
    ".css": "text/css",
}


class Tab:
    """One page of one browser; `call` hands the tab's worker a command and waits for its answer."""

    def __init__(self, bundle: Path) -> None:
        self.bundle = bundle
        self.jobs: queue.Queue[dict[str, Any]] = queue.Queue()
        self.answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def call(self, command: str, args: dict[str, Any], timeout: float = 300) -> Any:
        self.jobs.put({"command": command, "args": args})
        answer = self.answers.get(timeout=timeout)
        if "error" in answer:
            raise RuntimeError(f"the tab's {command} failed: {answer['error']}")
        return _decode(answer.get("result"))  # a command that answers nothing ("start") posts no result

    def hello(self, timeout: float = 120) -> dict[str, Any]:
        answer = self.answers.get(timeout=timeout)
        if "error" in answer:
            raise RuntimeError(f"the page failed to start: {answer['error']}")
        return answer

    def close(self) -> None:
        self.jobs.put({"command": "done"})
        time.sleep(0.5)
        self.server.shutdown()

    def _file(self, path: str) -> Path | None:
        if path.startswith("/static/worker_web/"):
            return ROOT / "worker_web" / "static" / "worker_web" / path.rsplit("/", 1)[1]
        if path.startswith("/static/onnxruntime-web/"):
            return self.bundle / "onnxruntime-web" / path.rsplit("/", 1)[1]
        if path.startswith("/shards/"):
            return self.bundle / "shards" / f"{path.split('/')[2]}.onnx"
        return None

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        tab = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, body: bytes, kind: str, status: int = 200) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                # Cross-origin isolation: SharedArrayBuffer, so the tab's WASM gets its threads, as on /provide/.
                self.send_header("Cross-Origin-Opener-Policy", "same-origin")
                self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                if path == "/":
                    return self._send(PAGE.encode(), "text/html")
                if path == "/job":
                    return self._send(json.dumps(tab.jobs.get()).encode(), "application/json")
                file = tab._file(path)
                if file is None or not file.is_file() or ".." in path:
                    return self._send(b"not found", "text/plain", 404)
                return self._send(file.read_bytes(), TYPES.get(file.suffix, "application/octet-stream"))

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                tab.answers.put(json.loads(body))
                self._send(b"{}", "application/json")

        return Handler


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


@contextlib.contextmanager
def browser(
    chromium: Path, bundle: Path, *, webgpu: bool, log: Path, kv_on_gpu: bool = True, socket: str | None = None
) -> Iterator[tuple[Tab, dict[str, Any]]]:
    """A headless shell with a fresh profile on the page; the page's hello (device, adapter) comes with it. `socket`:
    the ws:// URL the tab connects to when told to start serving (bench/webgpu_protocol.py's server)."""
    tab = Tab(bundle)
    profile = Path(f"/tmp/webgpu-profile-{uuid.uuid4().hex}")
    flags = [*FLAGS, *(WEBGPU_FLAGS if webgpu else WASM_FLAGS), f"--user-data-dir={profile}", "--headless"]
    with log.open("a") as out:
        out.write(f"\n--- {' '.join(flags)}\n")
        out.flush()
        query = ({} if kv_on_gpu else {"kvOnGpu": "0"}) | ({"socket": socket} if socket else {})
        url = tab.url + (f"?{urllib.parse.urlencode(query)}" if query else "")
        process = subprocess.Popen([str(chromium), *flags, url], stdout=out, stderr=subprocess.STDOUT)
        try:
            yield tab, tab.hello()
        finally:
            tab.close()
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
            shutil.rmtree(profile, ignore_errors=True)


# --- there: the measurements ---------------------------------------------------------------------------------------


def time_decode(runtime: ShardRuntime, *, prompt: int = 32, steps: int = 24) -> float:
    """Median ms per layer-token of decode steps after a prompt: worker_web.agent.provider.time_decode (which needs the
    agent's websockets, absent there) with the tab's timeDecode's prompt and steps."""
    rng = np.random.default_rng(0)
    runtime.open("time")

    def inputs(n: int) -> np.ndarray:
        if runtime.spec.has_embedding:
            return rng.integers(0, runtime.config.vocab, size=(1, n), dtype=np.int64)
        return (rng.random((1, n, runtime.config.hidden)) * 3 - 1.5).astype(np.float32)

    runtime.step("time", inputs(prompt))
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        runtime.step("time", inputs(1))
        times.append(time.perf_counter() - started)
    runtime.close("time")
    return statistics.median(times) * 1e3 / len(runtime.layers)


def _steps(inputs: list[np.ndarray]) -> list[dict[str, Any]]:
    return [
        {"dtype": "int64", "dims": list(x.shape), "data": _b64(x.astype(np.int64).tobytes())}
        if x.dtype == np.int64
        else {"dtype": "float32", "dims": list(x.shape), "data": _b64(x.astype(np.float32).tobytes())}
        for x in inputs
    ]


def deviation(
    tab: Tab,
    shard: dict[str, Any],
    runtime: ShardRuntime,
    prompts: list[list[np.ndarray]],
    one_layer: dict[int, ShardRuntime] | None = None,
) -> dict[str, Any]:
    """Per layer, over every prompt, step and position: the largest |tab - native| of the layer's hidden state,
    the largest |native|, the largest relative |d| / |native| where |native| >= 1, and the excess under LAYER
    (largest |d| / (atol + rtol |native|); conservative: these states went through the shard's earlier layers in
    the tab, where the referee's layer check starts each layer from the provider's own input)."""
    layers = list(range(shard["first_layer"], shard["end_layer"]))
    worst = {k: [0.0] * len(layers) for k in ("max_abs", "max_native", "max_rel", "layer_excess")}
    out: dict[str, Any] = {"max_abs": 0.0, "max_native": 0.0, "logits_excess": 0.0, "greedy_agrees": True}
    ms, referee = [], [0.0] * len(layers)
    for inputs in prompts:
        got = tab.call("evaluate", {"shard": shard, "steps": _steps(inputs)})
        runtime.open("dev")
        states = []
        for x, theirs in zip(inputs, got, strict=True):
            native = runtime.step("dev", x.astype(np.float32) if x.dtype == np.float16 else x)
            ms.append(theirs["ms"])
            mine = np.frombuffer(theirs["layerHidden"], dtype=np.float32).reshape(native.layer_hidden.shape)
            states.append(mine)
            d, ours = np.abs(mine - native.layer_hidden), np.abs(native.layer_hidden)
            for i in range(len(layers)):
                big = ours[i] >= 1
                worst["max_abs"][i] = max(worst["max_abs"][i], float(d[i].max()))
                worst["max_native"][i] = max(worst["max_native"][i], float(ours[i].max()))
                worst["max_rel"][i] = max(worst["max_rel"][i], float((d[i][big] / ours[i][big]).max(initial=0)))
                excess = float((d[i] / (LAYER.atol + LAYER.rtol * ours[i])).max())
                worst["layer_excess"][i] = max(worst["layer_excess"][i], excess)
            output = np.frombuffer(theirs["output"], dtype=np.float32).reshape(native.output.shape)
            out["max_abs"] = max(out["max_abs"], float(np.abs(output - native.output).max()))
            out["max_native"] = max(out["max_native"], float(np.abs(native.output).max()))
            if shard["has_head"]:
                excess = np.abs(output - native.output) / (LOGITS.atol + LOGITS.rtol * np.abs(native.output))
                out["logits_excess"] = max(out["logits_excess"], float(excess.max()))
                out["greedy_agrees"] &= int(np.argmax(output[0])) == int(np.argmax(native.output[0]))
        runtime.close("dev")
        if one_layer:
            referee = [max(a, b) for a, b in zip(referee, layer_check(one_layer, inputs, states), strict=True)]
    if one_layer:
        worst["referee_layer_excess"] = referee
    per_layer = [{"layer": layer} | {k: v[i] for k, v in worst.items()} for i, layer in enumerate(layers)]
    return {"layers": per_layer, "output": out, "evaluate_step_ms_median": statistics.median(ms)}


def layer_check(one_layer: dict[int, ShardRuntime], inputs: list[np.ndarray], states: list[np.ndarray]) -> list[float]:
    """The referee's layer check (verification's `_judge_layer`) on the tab's states: each layer re-executed natively
    as a one-layer shard from the tab's own input of steps 0..t in one prefill, against the tab's output at step t;
    the largest excess under LAYER per layer, over the steps."""
    bounds = np.cumsum([0] + [x.shape[1] for x in inputs])
    excess = []
    for i, (_, runtime) in enumerate(sorted(one_layer.items())):
        if i == 0:  # the hop's own input, float16 as relayed
            source = np.concatenate([x.astype(np.float32) for x in inputs], axis=1)
        else:
            source = np.concatenate([state[i - 1][None] for state in states], axis=1)
        worst = 0.0
        for t in range(len(inputs)):
            runtime.open("referee")
            ours = runtime.step("referee", source[:, : bounds[t + 1]]).layer_hidden[0, bounds[t] : bounds[t + 1]]
            runtime.close("referee")
            d = np.abs(states[t][i] - ours) / (LAYER.atol + LAYER.rtol * np.abs(ours))
            worst = max(worst, float(d.max()))
        excess.append(worst)
    return excess


def greedy_native(
    chain: list[ShardRuntime], prompt: list[int], tokens: int
) -> tuple[list[int], list[list[np.ndarray]]]:
    """Greedy tokens through the native chain, and every shard's inputs (float16 between shards, as relayed)."""
    inputs: list[list[np.ndarray]] = [[] for _ in chain]
    for runtime in chain:
        runtime.open("greedy")
    out, value = [], np.array([prompt], dtype=np.int64)
    for _ in range(tokens):
        step = value
        for index, runtime in enumerate(chain):
            inputs[index].append(step)
            output = runtime.step("greedy", step).output
            step = output if runtime.spec.has_head else output.astype(np.float16)
        out.append(int(np.argmax(step[0])))
        value = np.array([[out[-1]]], dtype=np.int64)
    for runtime in chain:
        runtime.close("greedy")
    return out, inputs


def greedy_tab(tab: Tab, shards: list[dict[str, Any]], prompt: list[int], tokens: int) -> list[int]:
    """Greedy tokens through the tab's own chain: each shard's output (float16 between shards) feeds the next. The
    worker's "evaluate" runs a fresh session, so each new token replays the steps before it (tiny model: cheap)."""
    history: list[list[np.ndarray]] = [[] for _ in shards]
    out, value = [], np.array([prompt], dtype=np.int64)
    for _ in range(tokens):
        step = value
        for index, shard in enumerate(shards):
            history[index].append(step)
            got = tab.call("evaluate", {"shard": shard, "steps": _steps(history[index])})[-1]
            output = np.frombuffer(got["output"], dtype=np.float32).reshape(got["dims"])
            step = output if shard["has_head"] else output.astype(np.float16)
        out.append(int(np.argmax(step[0])))
        value = np.array([[out[-1]]], dtype=np.int64)
    return out


def measure_backend(
    tab: Tab,
    hello: dict[str, Any],
    bundle: Path,
    manifest: dict[str, Any],
    natives: dict[str, ShardRuntime],
    rounds: int,
) -> dict[str, Any]:
    result: dict[str, Any] = {"page": hello, "real": {}, "tiny": {}}
    for entry in manifest["real"]["shards"]:
        shard, runtime = entry["shard"], natives[entry["shard"]["sha256"]]
        loaded = tab.call("load", {"shard": shard})
        saved = np.load(bundle / entry["inputs"])
        prompts = [
            [saved[f"p{p}s{s}"] for s in range(n)] for p, n in zip(range(entry["prompts"]), entry["steps"], strict=True)
        ]
        one_layer = {single["layer"]: natives[single["sha256"]] for single in entry.get("one_layer", [])}
        dev = deviation(tab, shard, runtime, prompts, one_layer)
        speed = [tab.call("benchmark", {"shard": shard})["ns"] / 1e6 for _ in range(rounds)]
        result["real"][shard["id"]] = {"load": loaded, "deviation": dev, "ms_per_layer_token": speed}
        print(
            f"  {shard['id']}: {statistics.median(speed):.3f} ms/layer-token, max |d| "
            f"{max(x['max_abs'] for x in dev['layers']):.3g}",
            file=sys.stderr,
            flush=True,
        )
    for quant, shards in manifest["tiny"]["chains"].items():
        chain = [natives[s["sha256"]] for s in shards]
        runs = []
        for prompt in manifest["tiny"]["prompts"]:
            native_tokens, inputs = greedy_native(chain, prompt, 8)
            tab_tokens = greedy_tab(tab, shards, prompt, 8)
            devs = {s["id"]: deviation(tab, s, r, [x]) for s, r, x in zip(shards, chain, inputs, strict=True)}
            runs.append({"prompt_tokens": len(prompt), "native": native_tokens, "tab": tab_tokens, "shards": devs})
        result["tiny"][quant] = runs
        agree = all(r["native"] == r["tab"] for r in runs)
        print(f"  tiny {quant}: greedy tokens agree {agree}", file=sys.stderr, flush=True)
    return result
