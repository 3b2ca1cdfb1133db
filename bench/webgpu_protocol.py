"""The GPU bench's protocol run (bench/webgpu.py): the server's side of docs/protocol.md for one provider tab, so the
tab's own protocol code (its WebSocket, hello and welcome, the benchmark challenge, open_session, binary step frames
through wire.js, close_session, commitments and a reveal) runs on the backend being measured.

A `Server` listens on loopback before the browser starts (the page hands the worker its ws:// URL as `socketPath`);
`serve_tab` then tells the tab to start serving and plays the server for its one connection: the welcome names a
benchmark shard, whose challenge answer is checked against native ONNX Runtime as worker_web/benchmark.py does; then
greedy jobs on a whole-model shard (head_output "argmax": each step's token is the next step's input) and, when one
travels, a real middle shard fed the native chain's float16 hidden states, each step timed from frame out to frame
in and compared with native; each session's commitments are collected and one layer is revealed and verified.
Pure-Python websockets (carried in the bundle where the machine lacks it), numpy, onnxruntime and the project's
Django-free modules only."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.webgpu_tab import Tab, greedy_native  # noqa: E402
from inference import challenge, commitment, wire  # noqa: E402
from inference.runtime import ShardRuntime  # noqa: E402
from transport import protocol as p  # noqa: E402
from verification import tolerance  # noqa: E402

GREEDY_TOKENS = 12
ANSWER_SECONDS = 300.0  # the longest one answer of the tab may take: a real shard's first load on WebGPU included
COMMIT_SECONDS = 10.0  # how long commitments may trail a close (worker_web/consumers.py LATE_COMMIT_SECONDS)


class TabFailed(Exception):
    """The tab answered with an error message, or not as the protocol says."""


class Connection:
    """The tab's one connection: control messages and frames in arrival order, commitments and heartbeats aside."""

    def __init__(self, socket: ServerConnection) -> None:
        self.socket = socket
        self.inbox: asyncio.Queue[dict[str, Any] | bytes] = asyncio.Queue()
        self.commits: dict[str, dict[int, str]] = {}  # session -> step -> root
        self.heartbeats = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def read(self) -> None:
        try:
            async for data in self.socket:
                if isinstance(data, bytes):
                    await self.inbox.put(data)
                    continue
                message = p.loads(data)
                if message["type"] == p.COMMIT:
                    for session, step, root in message["commits"]:
                        self.commits.setdefault(session, {})[step] = root
                elif message["type"] == p.HEARTBEAT:
                    self.heartbeats += 1
                else:
                    await self.inbox.put(message)
        except Exception as error:  # a dropped socket or a malformed message: whatever waits hears why, at once
            reason = f"{type(error).__name__}: {error}"
        else:
            reason = "the tab closed the connection"
        await self.inbox.put({"type": "connection ended", "reason": reason})

    async def send(self, data: str | bytes) -> None:
        await self.socket.send(data)

    async def expect(self, kind: str) -> dict[str, Any]:
        """The next control message, which must be of type `kind`."""
        got = await asyncio.wait_for(self.inbox.get(), ANSWER_SECONDS)
        if isinstance(got, bytes) or got["type"] != kind:
            what = "a binary frame" if isinstance(got, bytes) else got
            raise TabFailed(f"expected {kind!r}, the tab sent {what}")
        return got

    async def frame(self) -> wire.Frame:
        got = await asyncio.wait_for(self.inbox.get(), ANSWER_SECONDS)
        if not isinstance(got, bytes):
            raise TabFailed(f"expected a frame, the tab sent {got}")
        return wire.decode(got)

    async def committed(self, session: str, steps: int) -> dict[int, str]:
        """The session's commitments, once there is one per step (they trail the outputs, in batches)."""
        deadline = time.monotonic() + COMMIT_SECONDS
        while len(self.commits.get(session, {})) < steps and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return dict(self.commits.get(session, {}))


class Server:
    """A WebSocket server on loopback, in a thread of its own, for one tab at a time; `url` is the tab's socketPath."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.connections: asyncio.Queue[Connection] = self._call(self._queue(), 10)
        server = self._call(self._listen(), 10)
        self.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws/provider/"
        self._server = server

    async def _queue(self) -> asyncio.Queue[Connection]:
        return asyncio.Queue()

    async def _listen(self) -> Any:
        # Imported here: bench/webgpu.py puts the bundle's copy on sys.path first on a machine that lacks it.
        from websockets.asyncio.server import serve

        return await serve(self._accept, "127.0.0.1", 0, max_size=wire.MAX_FRAME_BYTES)

    async def _accept(self, socket: ServerConnection) -> None:
        connection = Connection(socket)
        await self.connections.put(connection)
        reading = asyncio.ensure_future(connection.read())
        await asyncio.wait([reading, connection.done], return_when=asyncio.FIRST_COMPLETED)
        reading.cancel()

    def _call(self, work: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def run(self, tab: Tab, plan: Plan, timeout: float = 3600) -> dict[str, Any]:
        """Start the tab serving (the page's Start), play the server for its connection, stop it."""
        tab.call("start", {"name": "bench"})
        try:
            return dict(self._call(_serve_tab(self.connections, plan), timeout))
        finally:
            tab.call("stop", {})

    def close(self) -> None:
        """Close the server on its own loop and wait for it, then stop the loop and its thread: nothing of it runs
        (or logs) after this returns."""
        self._call(self._close(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _close(self) -> None:
        self._server.close()
        await self._server.wait_closed()


@contextlib.contextmanager
def server() -> Iterator[Server]:
    running = Server()
    try:
        yield running
    finally:
        running.close()


@dataclasses.dataclass
class Plan:
    """What the server asks of the tab: the benchmark shard; greedy jobs (a whole-model shard, a prompt's ids); a
    middle shard with the float16 hidden states of each prompt's steps; the native runtimes, by SHA-256."""

    bench: dict[str, Any]
    greedy: list[tuple[dict[str, Any], list[int]]]
    middle: tuple[dict[str, Any], list[list[np.ndarray]]] | None
    natives: dict[str, ShardRuntime]


def plan(manifest: dict[str, Any], natives: dict[str, ShardRuntime], bundle: Path) -> Plan:
    """The benchmark on the first real middle shard (the real server picks the shortest middle one), else on the
    tiny model's first shard; greedy jobs on the whole-model shards for the tiny prompts; the first real middle
    shard fed its carried inputs."""
    tiny, real = manifest["tiny"], manifest["real"]["shards"]
    greedy = [(shard, prompt) for shard in tiny.get("whole", {}).values() for prompt in tiny["prompts"]]
    if not real:
        return Plan(bench=tiny["chains"]["f32"][0], greedy=greedy, middle=None, natives=natives)
    saved = np.load(bundle / real[0]["inputs"])
    inputs = [[saved[f"p{i}s{s}"] for s in range(n)] for i, n in enumerate(real[0]["steps"])]
    return Plan(bench=real[0]["shard"], greedy=greedy, middle=(real[0]["shard"], inputs), natives=natives)


async def _serve_tab(connections: asyncio.Queue[Connection], plan: Plan) -> dict[str, Any]:
    connection = await asyncio.wait_for(connections.get(), ANSWER_SECONDS)
    try:
        return await _session_of_connection(connection, plan)
    finally:
        connection.done.set_result(None)


async def _session_of_connection(tab: Connection, plan: Plan) -> dict[str, Any]:
    natives = plan.natives
    hello = p.hello_fields(await tab.expect(p.HELLO))
    bench = plan.bench
    await tab.send(
        p.dumps(
            p.WELCOME,
            provider_id=1,
            protocol=p.PROTOCOL_VERSION,
            benchmark=bench,
            max_frame_bytes=wire.MAX_FRAME_BYTES,
            heartbeat_seconds=15.0,
            states_keep_seconds=3600.0,
        )
    )
    result: dict[str, Any] = {"hello": hello, "benchmark": await _benchmark(tab, bench, natives[bench["sha256"]])}
    result["greedy"] = {}
    for shard, prompt in plan.greedy:
        job = await _greedy(tab, shard, prompt, natives[shard["sha256"]])
        result["greedy"].setdefault(shard["id"].split(":")[1], []).append(job)
        print(f"  protocol {shard['id']}: greedy agrees {job['tab'] == job['native']}", file=sys.stderr, flush=True)
    if plan.middle:
        shard, prompts = plan.middle
        runs = [await _middle(tab, shard, inputs, natives[shard["sha256"]]) for inputs in prompts]
        result["middle"] = {shard["id"]: runs}
    result["commits"] = sum(len(c) for c in tab.commits.values())
    result["heartbeats"] = tab.heartbeats
    return result


async def _benchmark(tab: Connection, shard: dict[str, Any], native: ShardRuntime) -> dict[str, Any]:
    """The challenge as worker_web/benchmark.py sets and judges it: timed from sending to the answer's arrival,
    checked against the native run of the same shard under the hop (or logits) tolerance."""
    ready = await tab.expect(p.BENCHMARK_READY)
    if ready["shard_id"] != shard["id"]:
        raise TabFailed(f"benchmark_ready for {ready['shard_id']}, the welcome named {shard['id']}")
    asked = challenge.Challenge(seed=secrets.randbits(challenge.SEED_BITS))
    sent = time.monotonic_ns()
    await tab.send(p.challenge_message(asked, shard_id=shard["id"]))
    answer = await tab.expect(p.BENCHMARK)
    received = time.monotonic_ns()
    layers = shard["end_layer"] - shard["first_layer"]
    measured = max(1, (received - sent) // (layers * asked.steps))
    size = challenge.answer_size(hidden=shard["hidden"], vocab=shard["vocab"], has_head=shard["has_head"])
    values = challenge.decode_answer(answer["answer"], size)
    ours = (await asyncio.to_thread(challenge.run, native, asked)).answer
    judge = tolerance.LOGITS if shard["has_head"] else tolerance.HOP
    excess = float("inf") if values is None else judge.excess(values, ours)
    passed = excess <= 1
    if passed:
        await tab.send(
            p.dumps(
                p.BENCHMARKED,
                shard_id=shard["id"],
                ns_per_layer_token=measured,
                claimed_ns_per_layer_token=answer["ns_per_layer_token"],
            )
        )
    else:  # recorded, not closed on: the rest of the run still measures the tab (the real server would close, 4400)
        await tab.send(p.dumps(p.ERROR, code=p.BENCHMARK_FAILED, message=f"{excess:.3g} times the tolerance"))
    return {
        "shard": shard["id"],
        "passed": passed,
        "excess": excess,
        "claimed_ns_per_layer_token": answer["ns_per_layer_token"],
        "measured_ns_per_layer_token": measured,
    }


async def _open(tab: Connection, shard: dict[str, Any], hop: int, head_output: str) -> tuple[uuid.UUID, float]:
    session = uuid.uuid4()
    fields = {"session": str(session), "hop": hop, "shard": shard, "head_output": head_output}
    await tab.send(p.dumps(p.OPEN_SESSION, **fields))
    opened = await tab.expect(p.SESSION_OPENED)
    if opened["session"] != str(session):
        raise TabFailed(f"session_opened for {opened['session']}, not {session}")
    return session, float(opened["load_ms"])


async def _step(tab: Connection, session: uuid.UUID, step: int, hop: int, tensor: np.ndarray) -> tuple[Any, float]:
    """One step frame out and its output frame back: (the output's tensor, round trip in ms)."""
    started = time.perf_counter()
    await tab.send(wire.encode(wire.MessageType.STEP_INPUT, session, step, hop, tensor))
    frame = await tab.frame()
    ms = (time.perf_counter() - started) * 1e3
    if (frame.kind, frame.session, frame.step, frame.shard) != (wire.MessageType.STEP_OUTPUT, session, step, hop):
        raise TabFailed(f"expected the output of step {step} of {session}, got {frame[:4]}")
    return frame.tensor, ms


async def _greedy(tab: Connection, shard: dict[str, Any], prompt: list[int], native: ShardRuntime) -> dict[str, Any]:
    """A greedy job on one whole-model shard: step 0 the prompt, then each step's argmax token as the next input."""
    expected, _ = greedy_native([native], prompt, GREEDY_TOKENS)
    session, load_ms = await _open(tab, shard, 0, p.HEAD_ARGMAX)
    tokens, ms, inputs = [], [], []
    value = np.array([prompt], dtype=np.int64)
    for step in range(GREEDY_TOKENS):
        inputs.append(value)
        output, took = await _step(tab, session, step, 0, value)
        if output.dtype != np.int64 or output.shape != (1, 1):
            raise TabFailed(f"a greedy head answers int64 [1, 1], got {output.dtype}{list(output.shape)}")
        tokens.append(int(output[0, 0]))
        ms.append(took)
        value = np.array([[tokens[-1]]], dtype=np.int64)
    record = {"prompt_tokens": len(prompt), "native": expected, "tab": tokens, "load_ms": load_ms}
    return record | await _close(tab, session, native, inputs, ms)


async def _middle(
    tab: Connection, shard: dict[str, Any], inputs: list[np.ndarray], native: ShardRuntime
) -> dict[str, Any]:
    """A middle hop: the native chain's float16 hidden states in, as the server relays them; the tab's float16
    outputs against native ONNX Runtime's on the same inputs, under the hop tolerance the referee judges by."""
    session, load_ms = await _open(tab, shard, 1, p.HEAD_LOGITS)
    ms, max_abs, excess = [], 0.0, 0.0
    native.open("protocol")
    try:
        for step, hidden in enumerate(inputs):
            output, took = await _step(tab, session, step, 1, hidden.astype(np.float16))
            ours = native.step("protocol", hidden.astype(np.float32)).output
            theirs = np.asarray(output, dtype=np.float32)
            if theirs.shape != ours.shape:
                raise TabFailed(f"step {step}: {list(theirs.shape)}, native {list(ours.shape)}")
            max_abs = max(max_abs, float(np.abs(theirs - ours).max()))
            excess = max(excess, tolerance.HOP.excess(theirs, ours))
            ms.append(took)
    finally:
        native.close("protocol")
    record = {"steps": len(inputs), "load_ms": load_ms, "max_abs": max_abs, "hop_excess": excess}
    return record | await _close(tab, session, native, inputs, ms)


async def _close(
    tab: Connection, session: uuid.UUID, native: ShardRuntime, inputs: list[np.ndarray], ms: list[float]
) -> dict[str, Any]:
    """Close the session, collect its commitments, reveal its last layer: the timings, commitments and reveal."""
    await tab.send(p.dumps(p.CLOSE_SESSION, session=str(session)))
    commits = await tab.committed(str(session), len(inputs))
    reveal = await _reveal(tab, session, commits, native, inputs)
    return _record(ms, commits, reveal)


async def _reveal(
    tab: Connection, session: uuid.UUID, commits: dict[int, str], native: ShardRuntime, inputs: list[np.ndarray]
) -> dict[str, Any]:
    """The shard's last layer revealed over every step of the (closed) session: each state's proof checked against
    the commitment the tab sent for its step, and the states against native ONNX Runtime's on the same inputs."""
    layers, steps = len(native.layers), len(inputs)
    layer = layers - 1
    request = uuid.uuid4().hex
    fields = {"request": request, "session": str(session), "layer": layer, "first_step": 0, "last_step": steps - 1}
    await tab.send(p.dumps(p.REVEAL, **fields))
    states = {}
    for _ in range(steps):
        frame = await tab.frame()
        if frame.kind != wire.MessageType.REVEAL or frame.session != session or frame.shard != layer:
            raise TabFailed(f"expected a revealed state of layer {layer}, got {frame[:4]}")
        states[frame.step] = np.array(frame.tensor, dtype=np.float32)
    revealed = await tab.expect(p.REVEALED)
    if revealed["request"] != request or len(revealed["proofs"]) != steps:
        raise TabFailed(f"revealed answers {revealed['request']} with {len(revealed['proofs'])} proofs")
    verified, excess = 0, 0.0
    native.open("reveal")
    try:
        for step, (tensor, proof) in enumerate(zip(inputs, revealed["proofs"], strict=True)):
            fed = tensor if tensor.dtype == np.int64 else tensor.astype(np.float32)
            ours = native.step("reveal", fed).layer_hidden[layer]
            state = states.get(step)
            if state is None or step not in commits:
                continue
            verified += commitment.verify(state, proof, commits[step], index=layer, count=layers)
            excess = max(excess, tolerance.LAYER.excess(state, ours))
    finally:
        native.close("reveal")
    return {"layer": layer, "steps": steps, "proofs_verified": verified, "layer_excess": excess}


def _record(ms: list[float], commits: dict[int, str], reveal: dict[str, Any]) -> dict[str, Any]:
    return {
        "round_trip_ms": [round(x, 3) for x in ms],
        "round_trip_ms_median": round(statistics.median(ms), 3),
        "commits": len(commits),
        "reveal": reveal,
    }


def summary(run: dict[str, Any]) -> Any:
    """The protocol run in brief: the benchmark's verdict, greedy agreement per quant, median round trips, the
    commitments the tab sent and how many revealed states their proofs opened."""
    if "error" in run:
        return run["error"]
    jobs = [job for runs in run["greedy"].values() for job in runs]
    jobs += [job for runs in run.get("middle", {}).values() for job in runs]
    brief: dict[str, Any] = {
        "benchmark": {k: run["benchmark"][k] for k in ("shard", "passed", "excess", "measured_ns_per_layer_token")},
        "commits": run["commits"],
        "proofs_verified": sum(j["reveal"]["proofs_verified"] for j in jobs),
        "states_revealed": sum(j["reveal"]["steps"] for j in jobs),
    }
    for quant, runs in run["greedy"].items():
        brief[f"tiny {quant} greedy agrees"] = all(r["native"] == r["tab"] for r in runs)
        brief[f"tiny {quant} round trip ms (median)"] = round(
            statistics.median(x for r in runs for x in r["round_trip_ms"]), 3
        )
    for shard, runs in run.get("middle", {}).items():
        brief[shard] = {
            "round_trip_ms_median": round(statistics.median(x for r in runs for x in r["round_trip_ms"]), 3),
            "max_abs": max(r["max_abs"] for r in runs),
            "hop_excess": max(r["hop_excess"] for r in runs),
        }
    return brief
