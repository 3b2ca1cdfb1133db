"""The provider tab on a real GPU: onnxruntime-web on WebGPU and on WASM against native ONNX Runtime, on the GPU
machine (one NVIDIA H200, reached through the session's device tool; nothing can be fetched there).

The tab's own code runs, not a separate page: a small page starts worker_web/static/worker_web/provider-worker.js
(the tab's Web Worker, with its shard cache, SHA-256 check, ShardRuntime and timeDecode) and sends it the commands
the provider page sends ("init", "load", "evaluate", "benchmark"). The worker picks WebGPU itself when the browser
offers a real adapter, as in a person's browser; the WASM figures come from a second browser started without WebGPU.
Python serves the static files and the shards over loopback (with the COOP/COEP headers that give the tab its
threads) and hands the page its jobs through /job and /result, so no Django, Playwright or network is needed there
(the page, the server and the measurements: bench/webgpu_tab.py).

Then the protocol run (bench/webgpu_protocol.py; `run --no-protocol` leaves it out): the page presses Start and the
tab serves a WebSocket server on loopback that plays docs/protocol.md's server side for it, so the tab's protocol
code runs on the backend too: hello and welcome, the benchmark challenge (its answer checked against native ONNX
Runtime as worker_web/benchmark.py does), greedy jobs on the tiny model's whole-model shards 0-4, f32 and q4
(open_session with head_output "argmax", step 0 the prompt's ids, then each step's token; the tokens against the
native greedy ones), the first real middle shard fed its float16 hidden states as binary frames (outputs against
native), close_session, every step's commitment, and one layer revealed per session with its proofs verified.
Per-step round trips (frame out to frame in, ms) go under backends[name]["protocol"]. The server is the pure-Python
`websockets` package, carried in the bundle (bundle/python/) for a machine that lacks it.

Three steps, because at most 64 MiB travels with one call and the browser alone is 61 MiB:

    .venv/bin/python bench/webgpu.py pack         # here: shards, inputs, browser, libraries -> .webgpu/carry<N>/
    # on the GPU machine, one call per part, the machine kept warm between them (see `pack`'s printed commands):
    python3 bench/webgpu.py stage .webgpu/carry1  # ... carry2, then the last part with `run`
    python3 bench/webgpu.py run                   # joins, unpacks, measures; writes $OUT/webgpu.json
    .venv/bin/python bench/webgpu.py finish DIR   # here: DIR/webgpu.json -> bench/results/webgpu.json and .png

Models that travel: the tiny random Llama (4 layers, hidden 64; shards 0-2 and 2-4, and the whole model 0-4 for the
protocol run, f32 and q4), whose greedy tokens are generated through the tab's chain and natively; and SmolLM2-135M's
middle shards (`pack --real`, by default 10-20 in q4, MatMulNBits, and 10-12 in f32), on hidden states the native
chain of the layers before them gave here for real prompts (float16, as the server relays them), with one-layer
shards of each of their layers for the referee's layer check (`--no-layer-shards` leaves those out: they weigh as
much as the shards). A large shard gets a run of its own, added to the earlier results with `finish --merge`: the
f32 10-20 (141 MB) was measured so, with

    .venv/bin/python bench/webgpu.py pack --real f32:10-20 --no-layer-shards
    python3 bench/webgpu.py run --backends webgpu,wasm   # after staging the parts
    .venv/bin/python bench/webgpu.py finish DIR --merge

`finish --merge` keeps each backend's protocol run from the new run (or the earlier one's, when the new run has
none). Here, without a GPU, the same run on WASM with Debian's Chromium checks the harness:

    .venv/bin/python bench/webgpu.py run --chromium /usr/lib/chromium/chromium --backends wasm
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import webgpu_protocol  # noqa: E402
from bench.webgpu_tab import Tab, browser, measure_backend, time_decode  # noqa: E402
from inference.runtime import ShardRuntime, configure_threads  # noqa: E402

PACK = ROOT / ".webgpu"  # git-ignored (.git/info/exclude): what travels, and the scratch it is made from
RESULTS = ROOT / "bench" / "results"
STAGE = Path("/tmp/webgpu-stage")  # on the GPU machine: the parts, kept while the machine stays warm
UNPACKED = Path("/tmp/webgpu")
PART_BYTES = 52 * 2**20  # each part plus the working tree stays under the 64 MiB a call carries
# config/finders.py's OnnxRuntimeWebFinder.files, written out: that module needs Django, which the GPU machine lacks.
ORT_FILES = (
    "ort.wasm.min.mjs",
    "ort-wasm-simd-threaded.mjs",
    "ort-wasm-simd-threaded.wasm",
    "ort.webgpu.min.mjs",
    "ort-wasm-simd-threaded.asyncify.mjs",
    "ort-wasm-simd-threaded.asyncify.wasm",
)
# From chromium-common: the headless shell dies without ICU's data and V8's snapshots.
CHROMIUM_COMMON = (
    "icudtl.dat",
    "v8_context_snapshot.bin",
    "snapshot_blob.bin",
    "libEGL.so",
    "libGLESv2.so",
    "libvulkan.so.1",
    "libvk_swiftshader.so",
    "vk_swiftshader_icd.json",
)
GLIBC = ("libc.so", "libm.so", "libdl.so", "libpthread.so", "librt.so", "ld-linux", "libgcc_s.so")
ICD = "/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json"
EGL_VENDOR = "/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json"
# name: (the browser offers WebGPU, the tab keeps the KV cache on the GPU); "webgpu-kv-readback" is the tab's
# path before the cache stayed there, kept to show what it costs.
BACKENDS = {"webgpu": (True, True), "webgpu-kv-readback": (True, False), "wasm": (False, True)}
REAL_SHARDS = "q4:10-20,f32:10-12"  # quant:first-end, the real model's shards that travel by default
TINY_PLAN = ((0, 2), (2, 4))
PROMPTS = [
    "What is the capital of France? The capital of France is Paris, a city on the Seine.",
    "Write a long story about a dragon. Once upon a time a dragon lived in a cave above a village.",
    "Explain photosynthesis briefly. Plants turn light, water and carbon dioxide into sugar and oxygen.",
]
PREFILL = 12  # tokens of each prompt in the first step; the rest are fed one per decode step


# --- here: what travels --------------------------------------------------------------------------------------------


def pack(args: argparse.Namespace) -> None:
    bundle = PACK / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    (bundle / "shards").mkdir(parents=True)
    real = [(quant, *map(int, layers.split("-"))) for quant, layers in (s.split(":") for s in args.real.split(","))]
    manifest = {"tiny": _pack_tiny(bundle), "real": _pack_real(bundle, real, layer_shards=args.layer_shards)}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1))
    ort = bundle / "onnxruntime-web"
    ort.mkdir()
    for name in ORT_FILES:
        shutil.copy(ROOT / "node_modules" / "onnxruntime-web" / "dist" / name, ort / name)
    _pack_browser(bundle, Path(args.deb))
    # The protocol run's WebSocket server: pure Python (its C speedups need not load there), put on sys.path by `run`.
    websockets = Path(importlib.util.find_spec("websockets").origin or "").parent  # type: ignore[union-attr]
    shutil.copytree(websockets, bundle / "python" / "websockets", ignore=shutil.ignore_patterns("__pycache__"))
    archive = PACK / "bundle.tar"
    subprocess.run(["tar", "-C", str(PACK), "-I", "xz -T0 -6", "-cf", str(archive), "bundle"], check=True)
    for old in PACK.glob("carry*"):
        shutil.rmtree(old)
    data, index = archive.read_bytes(), 0
    for index, start in enumerate(range(0, len(data), PART_BYTES), 1):
        (PACK / f"carry{index}").mkdir()
        (PACK / f"carry{index}" / f"part{index:02d}").write_bytes(data[start : start + PART_BYTES])
    print(
        f"{len(data) / 2**20:.1f} MiB in {index} parts; on the GPU machine, one call each, carry=['.webgpu/carry<N>']:"
    )
    for n in range(1, index):
        print(f"  python3 bench/webgpu.py stage .webgpu/carry{n}")
    print(f"  python3 bench/webgpu.py stage .webgpu/carry{index} && python3 bench/webgpu.py run  (carry .gl too)")
    print("  (the run serves the tab through the protocol too, with the websockets carried in the bundle;")
    print("   --no-protocol leaves that out; then, here: .venv/bin/python bench/webgpu.py finish DIR [--merge])")


def _save_shard(bundle: Path, proto: Any, spec: Any, config: Any) -> dict[str, Any]:
    import hashlib

    data = proto.SerializeToString()
    sha = hashlib.sha256(data).hexdigest()
    (bundle / "shards" / f"{sha}.onnx").write_bytes(data)
    return {
        "id": spec.shard_id,
        "sha256": sha,
        "url": f"/shards/{sha}/",
        "size": len(data),
        "first_layer": spec.first_layer,
        "end_layer": spec.end_layer,
        "has_embedding": spec.has_embedding,
        "has_head": spec.has_head,
        "hidden": config.hidden,
        "vocab": config.vocab,
    }


def _pack_tiny(bundle: Path) -> dict[str, Any]:
    import tempfile

    from inference.config import ShardSpec
    from inference.gguf_model import GGUFModel
    from inference.shard_builder import build_shard
    from inference.tiny import write_tiny_gguf

    model = GGUFModel(write_tiny_gguf(Path(tempfile.mkdtemp()) / "tiny.gguf"))
    chains = {}
    for quant in ("f32", "q4"):
        specs = [ShardSpec("tiny", quant, a, b, model.config.n_layers) for a, b in TINY_PLAN]
        chains[quant] = [_save_shard(bundle, build_shard(model, s), s, model.config) for s in specs]
    whole = {}  # one shard of every layer, embedding to head, for the protocol run's greedy jobs
    for quant in ("f32", "q4"):
        spec = ShardSpec("tiny", quant, 0, model.config.n_layers, model.config.n_layers)
        whole[quant] = _save_shard(bundle, build_shard(model, spec), spec, model.config)
    rng = np.random.default_rng(19)
    prompts = [rng.integers(3, model.config.vocab, size=n).tolist() for n in (5, 17, 40)]
    return {"chains": chains, "whole": whole, "prompts": prompts}


def _pack_real(bundle: Path, real: list[tuple[str, int, int]], *, layer_shards: bool) -> dict[str, Any]:
    """The middle shards, and the float16 hidden states the native chain of the layers before them gives them; with
    `layer_shards`, one-layer shards of each of their layers for the referee's layer check."""
    from inference.config import ShardSpec
    from inference.gguf_model import GGUFModel, smollm2_path
    from inference.shard_builder import build_shard
    from inference.tokenizer import ChatTokenizer

    model = GGUFModel(smollm2_path())
    tokenizer = ChatTokenizer.from_gguf(model)
    prompts = [tokenizer.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    shards = []
    for quant, first, end in real:
        head = ShardRuntime(build_shard(model, ShardSpec("smollm2-135m", quant, 0, first, 30)).SerializeToString())
        spec = ShardSpec("smollm2-135m", quant, first, end, 30)
        descriptor = _save_shard(bundle, build_shard(model, spec), spec, model.config)
        inputs = []
        for ids in prompts:
            head.open("pack")
            steps = [ids[:PREFILL]] + [[t] for t in ids[PREFILL:]]
            inputs.append([head.step("pack", np.array([s], dtype=np.int64)).output.astype(np.float16) for s in steps])
            head.close("pack")
        name = f"inputs-{quant}-{first}-{end}.npz"
        arrays: dict[str, Any] = {f"p{p}s{s}": x for p, steps in enumerate(inputs) for s, x in enumerate(steps)}
        np.savez(bundle / name, **arrays)
        one_layer = []  # what the referee re-executes for its layer check (verification/layers.py)
        for layer in range(first, end) if layer_shards else ():
            single = ShardSpec("smollm2-135m", quant, layer, layer + 1, 30)
            saved = _save_shard(bundle, build_shard(model, single), single, model.config)
            one_layer.append({"layer": layer, "sha256": saved["sha256"]})
        counts = [len(s) for s in inputs]
        shards.append(
            {"shard": descriptor, "inputs": name, "prompts": len(prompts), "steps": counts, "one_layer": one_layer}
        )
        print(f"packed {spec.shard_id}: {descriptor['size'] / 1e6:.1f} MB", file=sys.stderr)
    return {"shards": shards}


def _pack_browser(bundle: Path, deb: Path) -> None:
    """Debian's headless shell, what it needs of chromium-common, and the desktop libraries it links that the GPU
    machine lacks (everything ldd finds here but the C library itself)."""
    browser = bundle / "browser"
    (browser / "common").mkdir(parents=True)
    (browser / "lib").mkdir()
    shutil.copy(deb, browser / "chromium-headless-shell.deb")
    for name in CHROMIUM_COMMON:
        shutil.copy(Path("/usr/lib/chromium") / name, browser / "common" / name)
    scratch = PACK / "deb"
    shutil.rmtree(scratch, ignore_errors=True)
    subprocess.run(["dpkg", "-x", str(deb), str(scratch)], check=True)
    ldd = subprocess.run(
        ["ldd", str(scratch / "usr/lib/chromium/chromium-headless-shell")], capture_output=True, text=True, check=True
    ).stdout
    for line in ldd.splitlines():
        parts = line.split("=>")
        if len(parts) == 2 and parts[1].strip().startswith("/"):
            path = Path(parts[1].split()[0])
            if not path.name.startswith(GLIBC):
                shutil.copy(path, browser / "lib" / parts[0].strip())


def run(args: argparse.Namespace) -> None:
    out = Path(os.environ.get("OUT", "/tmp/webgpu-out"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    bundle, chromium = (Path(args.bundle), Path(args.chromium)) if args.chromium else unpack()
    manifest = json.loads((bundle / "manifest.json").read_text())
    sys.path.insert(0, str(bundle / "python"))  # websockets, carried: the machine may lack it
    threads = configure_threads(args.threads)
    shards = [e["shard"] for e in manifest["real"]["shards"]] + [
        s for chain in manifest["tiny"]["chains"].values() for s in chain
    ]
    shards += list(manifest["tiny"].get("whole", {}).values())  # bundles packed before the protocol run lack them
    shards += [single for e in manifest["real"]["shards"] for single in e.get("one_layer", [])]
    natives = {s["sha256"]: ShardRuntime(bundle / "shards" / f"{s['sha256']}.onnx", sha256=s["sha256"]) for s in shards}
    native_speed = {
        e["shard"]["id"]: [time_decode(natives[e["shard"]["sha256"]]) for _ in range(args.rounds)]
        for e in manifest["real"]["shards"]
    }
    results: dict[str, Any] = {
        "benchmark": "webgpu",
        "machine": _machine(),
        "native_threads": threads or os.cpu_count(),
        "native_ms_per_layer_token": native_speed,
        "backends": {},
    }
    log = out / "chromium.log"
    plan = webgpu_protocol.plan(manifest, natives, bundle) if args.protocol else None
    for name in args.backends.split(","):
        print(f"{name}:", file=sys.stderr, flush=True)
        try:
            webgpu, kv_on_gpu = BACKENDS[name]
            with (
                webgpu_protocol.server() as server,
                browser(chromium, bundle, webgpu=webgpu, log=log, kv_on_gpu=kv_on_gpu, socket=server.url) as (
                    tab,
                    hello,
                ),
            ):
                results["backends"][name] = backend = measure_backend(
                    tab, hello, bundle, manifest, natives, args.rounds
                )
                if plan is not None:
                    backend["protocol"] = _protocol(server, tab, plan)
        except Exception as error:  # record what happened, and measure the other backend anyway
            results["backends"][name] = {"error": f"{type(error).__name__}: {error}"}
            print(f"  failed: {error}", file=sys.stderr, flush=True)
        (out / "webgpu.json").write_text(json.dumps(results, indent=1))
    results["seconds"] = round(time.time() - started, 1)
    (out / "webgpu.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(summary(results), indent=1))


def _protocol(server: webgpu_protocol.Server, tab: Tab, plan: webgpu_protocol.Plan) -> dict[str, Any]:
    """The protocol run on this backend; its failure recorded beside the page commands' figures, not over them."""
    try:
        return server.run(tab, plan)
    except Exception as error:
        print(f"  protocol run failed: {error}", file=sys.stderr, flush=True)
        return {"error": f"{type(error).__name__}: {error}"}


def _machine() -> dict[str, Any]:
    smi = (
        shutil.which("nvidia-smi")
        and subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.strip()
    )
    import onnxruntime

    return {"cpus": os.cpu_count(), "gpu": smi or None, "onnxruntime": onnxruntime.__version__}


def unpack() -> tuple[Path, Path]:
    """Joins the staged parts and unpacks them; the headless shell with chromium-common's files beside it; the
    Vulkan/EGL loaders (.gl, carried with the last call) into / as the device README says; the environment."""
    bundle, chromium = UNPACKED / "bundle", UNPACKED / "chromium" / "usr/lib/chromium/chromium-headless-shell"
    if not bundle.is_dir():
        UNPACKED.mkdir(parents=True, exist_ok=True)
        joined = UNPACKED / "bundle.tar"
        with joined.open("wb") as whole:
            for part in sorted(STAGE.glob("part*")):
                whole.write(part.read_bytes())
        subprocess.run(["tar", "-C", str(UNPACKED), "-xJf", str(joined)], check=True)
        joined.unlink()
        subprocess.run(
            ["dpkg", "-x", str(bundle / "browser" / "chromium-headless-shell.deb"), str(UNPACKED / "chromium")],
            check=True,
        )
        for file in (bundle / "browser" / "common").iterdir():
            shutil.copy(file, chromium.parent / file.name)
    if Path(".gl").is_dir() and not Path("/usr/lib/x86_64-linux-gnu/libvulkan.so.1").exists():
        for deb in Path(".gl").glob("*.deb"):
            subprocess.run(["dpkg", "-x", str(deb), "/"], check=True)
        subprocess.run(["ldconfig"], check=True)
    libs = str(_missing_libraries(bundle / "browser" / "lib", UNPACKED / "lib"))
    os.environ["LD_LIBRARY_PATH"] = (
        f"{libs}:{os.environ['LD_LIBRARY_PATH']}" if os.environ.get("LD_LIBRARY_PATH") else libs
    )
    if Path(ICD).is_file():
        os.environ["VK_DRIVER_FILES"] = ICD
        os.environ["__EGL_VENDOR_LIBRARY_FILENAMES"] = EGL_VENDOR
    return bundle, chromium


def _missing_libraries(carried: Path, folder: Path) -> Path:
    """Links to the carried libraries that the machine's own linker does not know: its own (newer) C++ runtime,
    zlib and the like stay in use, also for NVIDIA's driver that the browser's GPU process loads."""
    known = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for library in carried.iterdir():
        if f"{library.name} (" not in known:
            (folder / library.name).symlink_to(library)
    print(f"carried libraries in use: {sorted(p.name for p in folder.iterdir())}", file=sys.stderr, flush=True)
    return folder


def stage(args: argparse.Namespace) -> None:
    STAGE.mkdir(parents=True, exist_ok=True)
    for part in Path(args.folder).glob("part*"):
        shutil.copy(part, STAGE / part.name)
    print(f"staged: {sorted(p.name for p in STAGE.glob('part*'))}")


def summary(results: dict[str, Any]) -> dict[str, Any]:
    brief: dict[str, Any] = {
        "native_ms_per_layer_token": {
            k: round(statistics.median(v), 4) for k, v in results["native_ms_per_layer_token"].items()
        }
    }
    for name, backend in results["backends"].items():
        if "error" in backend:
            brief[name] = backend["error"]
            continue
        page = backend["page"]
        brief[name] = {
            "backend": (page.get("device") or {}).get("backend"),
            "adapter": (page.get("device") or {}).get("adapter"),
            "threads": (page.get("device") or {}).get("threads"),
        }
        for shard, r in backend["real"].items():
            brief[name][shard] = {
                "ms_per_layer_token": round(statistics.median(r["ms_per_layer_token"]), 4),
                "max_abs_layer": max(x["max_abs"] for x in r["deviation"]["layers"]),
                "max_layer_excess": max(x["layer_excess"] for x in r["deviation"]["layers"]),
            }
        for quant, runs in backend["tiny"].items():
            brief[name][f"tiny {quant} greedy agrees"] = all(r["native"] == r["tab"] for r in runs)
        if "protocol" in backend:
            brief[name]["protocol"] = webgpu_protocol.summary(backend["protocol"])
    return brief


def finish(args: argparse.Namespace) -> None:
    results = json.loads((Path(args.folder) / "webgpu.json").read_text())
    if args.merge:
        results = merge(json.loads((RESULTS / "webgpu.json").read_text()), results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "webgpu.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, RESULTS / "webgpu.png")
    print(json.dumps(summary(results), indent=1))


def merge(before: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A run of other shards added to an earlier one (at most 64 MiB travel per call, so a large shard gets a run of
    its own): each shard's figures from the run that measured it, the tiny model's and the page's from the new one.
    Every run is listed under "runs" with what it measured."""
    merged = dict(new)
    merged["native_ms_per_layer_token"] = before["native_ms_per_layer_token"] | new["native_ms_per_layer_token"]
    merged["backends"] = {}
    for name in before["backends"].keys() | new["backends"].keys():
        old, fresh = before["backends"].get(name, {}), new["backends"].get(name, {})
        if "error" in fresh or not fresh:
            merged["backends"][name] = old
            continue
        merged["backends"][name] = fresh | {"real": old.get("real", {}) | fresh["real"]}
        if "protocol" not in fresh and "protocol" in old:  # a run without the protocol keeps the earlier one's
            merged["backends"][name]["protocol"] = old["protocol"]
    runs = before.get("runs") or [
        {"seconds": before.get("seconds"), "shards": list(before["native_ms_per_layer_token"])}
    ]
    merged["runs"] = runs + [{"seconds": new.get("seconds"), "shards": list(new["native_ms_per_layer_token"])}]
    return merged


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = {k: v for k, v in results["backends"].items() if "error" not in v}
    shards = list(results["native_ms_per_layer_token"])
    fig, (speed, dev) = plt.subplots(1, 2, figsize=(14, 4.6))
    x, width = np.arange(len(shards)), 0.8 / (len(backends) + 1)
    bars = {"native ORT": [statistics.median(results["native_ms_per_layer_token"][s]) for s in shards]}
    bars |= {
        name: [statistics.median(b["real"][s]["ms_per_layer_token"]) if s in b["real"] else 0 for s in shards]
        for name, b in backends.items()
    }
    for i, (label, values) in enumerate(bars.items()):
        speed.bar(x + (i - len(bars) / 2 + 0.5) * width, values, width, label=label)
    speed.set_yscale("log")
    speed.set_xticks(x, shards, fontsize="small")
    speed.set_ylabel("ms per layer-token, decode (median)")
    speed.set_title(f"Decode speed: the tab's benchmark; native ORT, {results['native_threads']} threads")
    speed.legend(fontsize="small")
    for name, b in backends.items():
        for shard in (s for s in shards if s in b["real"]):
            layers = b["real"][shard]["deviation"]["layers"]
            referee = "referee_layer_excess" in layers[0]  # carried without one-layer shards: the states' drift
            dev.plot(
                [la["layer"] for la in layers],
                [la.get("referee_layer_excess", la["layer_excess"]) for la in layers],
                marker="o",
                linestyle="-" if referee else ":",
                label=f"{name} {shard}" + ("" if referee else " (states over the shard)"),
            )
    dev.axhline(1 / 8, color="grey", linestyle="--", label="1/8: the margin docs/tolerance.md keeps")
    dev.set_xlabel("layer")
    dev.set_ylabel("max |d| / (atol + rtol |native|), LAYER")
    dev.set_title("The referee's layer check on the tab: excess under LAYER (1 = slashed)")
    dev.legend(fontsize="x-small")
    fig.suptitle(
        f"SmolLM2-135M middle shards: onnxruntime-web 1.30 in headless Chromium on {results['machine']['gpu']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="here: build what travels into .webgpu/carry<N>/")
    packing.add_argument(
        "--deb",
        default=str(next(iter((PACK / "dl").glob("chromium-headless-shell_*.deb")), "")),
        help="Debian's chromium-headless-shell .deb (apt-get download chromium-headless-shell)",
    )
    packing.add_argument("--real", default=REAL_SHARDS, help="the real model's shards that travel, quant:first-end,...")
    packing.add_argument(
        "--layer-shards",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one-layer shards of every layer, for the referee's layer check (as large again as the shards)",
    )
    staging = commands.add_parser("stage", help="there: keep one carried part in /tmp until the last call")
    staging.add_argument("folder")
    running = commands.add_parser("run", help="there: join, unpack, measure; writes $OUT/webgpu.json")
    running.add_argument("--rounds", type=int, default=3)
    running.add_argument("--threads", type=int, default=0, help="native ORT threads (0: one per core)")
    running.add_argument("--backends", default=",".join(BACKENDS), help=f"some of {', '.join(BACKENDS)}")
    running.add_argument("--chromium", help="a headless shell already here (a test on this machine, WASM only)")
    running.add_argument("--bundle", default=str(PACK / "bundle"), help="with --chromium: the packed bundle")
    running.add_argument(
        "--protocol",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also serve the tab through docs/protocol.md (bench/webgpu_protocol.py)",
    )
    finishing = commands.add_parser("finish", help="here: the device's webgpu.json into bench/results/, with a plot")
    finishing.add_argument("folder")
    finishing.add_argument("--merge", action="store_true", help="add this run's shards to bench/results/webgpu.json")
    args = parser.parse_args()
    {"pack": pack, "stage": stage, "run": run, "finish": finish}[args.command](args)


if __name__ == "__main__":
    main()
