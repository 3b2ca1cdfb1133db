"""The provider tab's frame code (worker_web/static/worker_web/wire.js) against inference/wire.py, run in Node:
the same bytes both ways, and float16 rounding identical to numpy's, with and without a native Float16Array."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest

from inference import wire

WIRE_JS = Path(__file__).resolve().parents[2] / "worker_web" / "static" / "worker_web" / "wire.js"
pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")

# Decodes the frame on stdin, answers it with its values as float16 (or float32) and prints the answer as hex.
SCRIPT = """
import * as wire from %s;
if (process.argv.includes("--no-float16array")) delete globalThis.Float16Array;
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const bytes = Buffer.concat(chunks);
const frame = wire.decode(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
const values = frame.data instanceof BigInt64Array ? Float32Array.from(frame.data, Number) : frame.data;
const dtype = process.argv.includes("--float32") ? wire.FLOAT32 : wire.FLOAT16;
const out = new Uint8Array(wire.encodeOutput(frame, frame.dims, values, dtype));
console.log(JSON.stringify({session: frame.session, step: frame.step, shard: frame.shard, dims: frame.dims,
  native: typeof Float16Array === "function", hex: Buffer.from(out).toString("hex")}));
"""


def run_js(frame: bytes, *flags: str) -> dict[str, object]:
    script = SCRIPT % json.dumps(WIRE_JS.as_uri())
    done = subprocess.run(
        ["node", "--input-type=module", "-e", script, "--", *flags], input=frame, capture_output=True, check=True
    )
    return dict(json.loads(done.stdout))


def hard_values() -> np.ndarray:
    """Values float16 rounding gets wrong when it is careless: ties, subnormals, overflow, signed zero."""
    rng = np.random.default_rng(7)
    edges = [0.0, -0.0, 1.0, 1 + 2**-11, 1 + 3 * 2**-11, 65504.0, 65519.0, 65520.0, -70000.0, 6.1e-5, 6.0e-5]
    edges += [2**-24, 2**-25, 3 * 2**-26, 1e-8, -1e-7, 0.1, -2.5e-6, 2**-14 - 2**-25]
    random = rng.standard_normal(2001) * rng.choice([1e-6, 1e-3, 1.0, 30.0, 3000.0], size=2001)
    return np.concatenate([np.array(edges), random]).astype(np.float32)


@pytest.mark.parametrize("flags", [(), ("--no-float16array",)])
def test_hidden_states_go_out_as_float16_rounded_like_numpy(flags: tuple[str, ...]) -> None:
    values = hard_values().reshape(1, -1, 4)
    session = uuid.uuid4()
    frame = wire.encode(wire.MessageType.STEP_INPUT, session, 41, 2, values.astype(np.float32))
    answer = run_js(frame, *flags)
    if flags:
        assert answer["native"] is False
    decoded = wire.decode(bytes.fromhex(str(answer["hex"])))
    assert decoded.kind == wire.MessageType.STEP_OUTPUT
    assert (decoded.session, decoded.step, decoded.shard) == (session, 41, 2)
    assert answer["session"] == str(session) and answer["dims"] == list(values.shape)
    assert decoded.tensor.dtype == np.float16
    with np.errstate(over="ignore"):  # 65520 and -70000 overflow to infinity, in both
        assert decoded.tensor.tobytes() == values.astype(np.float16).tobytes()


@pytest.mark.parametrize("flags", [(), ("--no-float16array",)])
def test_float16_inputs_widen_exactly(flags: tuple[str, ...]) -> None:
    every = np.arange(0, 0x10000, dtype=np.uint16).view(np.float16)
    halves = every[np.isfinite(every)].reshape(1, -1, 2)
    frame = wire.encode(wire.MessageType.STEP_INPUT, uuid.uuid4(), 0, 1, halves)
    decoded = wire.decode(bytes.fromhex(str(run_js(frame, "--float32", *flags)["hex"])))
    assert decoded.tensor.dtype == np.float32
    assert np.array_equal(decoded.tensor, halves.astype(np.float32))  # every finite half, bit for bit


def test_token_ids_and_logits_keep_their_values() -> None:
    ids = np.array([[1, 49151, 2, 300]], dtype=np.int64)
    frame = wire.encode(wire.MessageType.STEP_INPUT, uuid.uuid4(), 0, 0, ids)
    decoded = wire.decode(bytes.fromhex(str(run_js(frame, "--float32")["hex"])))
    assert decoded.tensor.tolist() == [[1.0, 49151.0, 2.0, 300.0]]


def test_a_truncated_frame_is_refused() -> None:
    frame = wire.encode(wire.MessageType.STEP_INPUT, uuid.uuid4(), 0, 0, np.zeros((1, 2, 4), np.float16))
    with pytest.raises(subprocess.CalledProcessError) as refused:
        run_js(frame[:-1])
    assert b"payload is" in refused.value.stderr


ARGMAX_SCRIPT = """
import * as wire from %s;
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const bytes = Buffer.concat(chunks);
const frame = wire.decode(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
console.log(Buffer.from(new Uint8Array(wire.encodeArgmax(frame, frame.data))).toString("hex"));
"""


@pytest.mark.parametrize("case", ["random", "tie", "last", "negative"])
def test_the_tabs_argmax_answer_is_numpys_argmax(case: str) -> None:
    logits = np.random.default_rng(3).standard_normal((1, 49152)).astype(np.float32) * 10
    if case == "tie":  # two equal maxima: the first wins, as in numpy
        logits[0, [7, 9000]] = logits.max() + 1
    elif case == "last":
        logits[0, -1] = logits.max() + 0.001
    elif case == "negative":
        logits = -np.abs(logits) - 1
    session = uuid.uuid4()
    frame = wire.encode(wire.MessageType.STEP_INPUT, session, 5, 2, logits)
    script = ARGMAX_SCRIPT % json.dumps(WIRE_JS.as_uri())
    done = subprocess.run(["node", "--input-type=module", "-e", script], input=frame, capture_output=True, check=True)
    answer = wire.decode(bytes.fromhex(done.stdout.decode().strip()))
    assert (answer.kind, answer.session, answer.step, answer.shard) == (wire.MessageType.STEP_OUTPUT, session, 5, 2)
    assert answer.tensor.dtype == np.int64 and answer.tensor.tolist() == [[int(np.argmax(logits[0]))]]
