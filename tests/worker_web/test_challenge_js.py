"""The provider tab's challenge code (worker_web/static/worker_web/challenge.js) against inference/challenge.py, run
in Node: the same inputs, bit for bit, for every step of a challenge, for hidden states and token ids, over seeds
that use both halves of the 53-bit range; and the answer's base64 as the server decodes it."""

from __future__ import annotations

import json
import shutil
import subprocess
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference import challenge

CHALLENGE_JS = Path(__file__).resolve().parents[2] / "worker_web" / "static" / "worker_web" / "challenge.js"
pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")

# Runs each challenge on stdin through runChallenge with a stand-in runtime that records every step's input (as hex)
# and returns that input as its output; prints the recorded steps, the answer and encodeAnswer's text.
SCRIPT = """
import * as c from %s;
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const hex = (a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString("hex");
const results = [];
for (const { shard, seed, prompt, steps } of JSON.parse(Buffer.concat(chunks).toString())) {
  const fed = [];
  const runtime = {
    shard, layers: 2, open() {}, close() {},
    async step(id, data, dims) {
      fed.push({ dims, hex: hex(data) });
      return { output: data instanceof BigInt64Array ? Float32Array.from(data, Number) : data };
    },
  };
  const { answer, nsPerLayerToken } = await c.runChallenge(runtime, { seed, prompt, steps });
  results.push({ fed, answer: hex(answer), text: c.encodeAnswer(answer), ns: nsPerLayerToken });
}
console.log(JSON.stringify(results));
"""

SEEDS = [0, 1, 0xFFFFFFFF, 2**32, 2**52 + 12345, 2**53 - 1, 7_390_123_456_789]


def run_js(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    script = SCRIPT % json.dumps(CHALLENGE_JS.as_uri())
    done = subprocess.run(
        ["node", "--input-type=module", "-e", script], input=json.dumps(cases).encode(), capture_output=True, check=True
    )
    return list(json.loads(done.stdout))


def stand_in(shard: dict[str, Any]) -> Any:
    """What `challenge.inputs` reads of a runtime."""
    config = types.SimpleNamespace(hidden=shard["hidden"], vocab=shard["vocab"])
    return types.SimpleNamespace(config=config, spec=types.SimpleNamespace(has_embedding=shard["has_embedding"]))


@pytest.mark.parametrize("has_embedding", [False, True], ids=["hidden-states", "token-ids"])
def test_the_tab_feeds_the_shard_exactly_the_inputs_the_server_derives(has_embedding: bool) -> None:
    shard = {"hidden": 24, "vocab": 49152, "has_embedding": has_embedding}
    cases: list[dict[str, Any]] = [{"shard": shard, "seed": seed, "prompt": 3, "steps": 4} for seed in SEEDS]
    for case, got in zip(cases, run_js(cases), strict=True):
        found = challenge.Challenge(seed=case["seed"], prompt=3, steps=4)
        expected = challenge.inputs(found, stand_in(shard))
        assert [step["dims"] for step in got["fed"]] == [list(tensor.shape) for tensor in expected]
        assert [step["hex"] for step in got["fed"]] == [tensor.tobytes().hex() for tensor in expected], case["seed"]


def test_the_inputs_are_spread_and_in_range() -> None:
    """Not a degenerate hash: hidden values fill [-2, 2) with mean near 0, token ids cover the vocabulary, and
    neighbouring seeds and steps differ."""
    values = challenge.step_input(5, 1, positions=64, hidden=576, vocab=49152, has_embedding=False)
    assert values.dtype == np.float32 and -2 <= values.min() < -1.99 and 1.99 < values.max() < 2
    assert abs(float(values.mean())) < 0.01
    ids = challenge.step_input(5, 1, positions=4096, hidden=576, vocab=49152, has_embedding=True)
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 49152 and len(np.unique(ids)) > 3500
    for other in (challenge.words(6, 1, 64), challenge.words(5, 2, 64)):
        assert not np.array_equal(challenge.words(5, 1, 64), other)


def test_the_tabs_answer_is_what_the_server_decodes() -> None:
    shard = {"hidden": 16, "vocab": 100, "has_embedding": False}
    got = run_js([{"shard": shard, "seed": 99, "prompt": 2, "steps": 3}])[0]
    last = challenge.inputs(challenge.Challenge(seed=99, prompt=2, steps=3), stand_in(shard))[-1].reshape(-1)
    assert got["answer"] == last.tobytes().hex()  # the stand-in's output is its input: the last step's
    decoded = challenge.decode_answer(got["text"], 16)
    assert decoded is not None and np.array_equal(decoded, last)
    assert got["text"] == challenge.encode_answer(last) and got["ns"] >= 1
