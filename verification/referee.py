"""The referee's arithmetic: re-run a hop from its recorded inputs, judge its outputs, re-execute one layer.

Phase 1 needs no provider: every hop of the job is re-run step by step (its KV cache rebuilt the way the provider
built it) from the inputs the server relayed, and each output is judged against what the provider returned. Phase 2
works on one hop: its per-layer states as the provider revealed them, against the referee's own (bisection), and
finally one layer re-executed from the provider's revealed input (the proof). No Django: verification/services
feeds it, bench/verification.py calls it directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Callable, Sequence

import numpy as np

from inference.runtime import ShardRuntime, StepOutput
from verification import tolerance

# A head's answer as the transcript keeps it: its argmax token int64 [1, 1], or (indices, values) of its largest
# logits when the job sampled.
HeadAnswer = np.ndarray | tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass
class HopWork:
    """One hop of a finished job: how to load its shard, and what it was fed and returned at each step."""

    hop: int
    load: Callable[[], ShardRuntime]
    inputs: Sequence[np.ndarray]  # token ids [1, S] or float16 hidden states [1, S, H], per step
    outputs: Sequence[np.ndarray | HeadAnswer]  # the next hop's recorded input, or the head's answer, per step


@dataclasses.dataclass
class Finding:
    """The first step of a hop whose output left the tolerance, and by how much (excess > 1)."""

    step: int
    hop: int
    excess: float


def pack(inputs: Sequence[Sequence[np.ndarray]], heads: Sequence[HeadAnswer], *, steps: int) -> bytes:
    """A transcript's bytes: every hop's input per step (`in_<hop>_<step>`) and the head's answers (`head_<step>`,
    or `headidx_<step>` and `headval_<step>` for a sampled job), steps 0..steps-1, as one .npz."""
    arrays: dict[str, np.ndarray] = {}
    for hop, hop_inputs in enumerate(inputs):
        for step in range(steps):
            arrays[f"in_{hop}_{step}"] = np.asarray(hop_inputs[step])
    for step in range(steps):
        answer = heads[step]
        if isinstance(answer, tuple):
            arrays[f"headidx_{step}"], arrays[f"headval_{step}"] = answer
        else:
            arrays[f"head_{step}"] = answer
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def rerun(runtime: ShardRuntime, inputs: Sequence[np.ndarray], *, until: int, session: str = "referee"):  # type: ignore[no-untyped-def]
    """The hop's steps 0..until-1 again, from its recorded inputs: yields (step, StepOutput)."""
    runtime.open(session)
    try:
        for step in range(until):
            yield step, runtime.step(session, np.asarray(inputs[step]))
    finally:
        runtime.close(session)


def output_excess(result: StepOutput, recorded: np.ndarray | HeadAnswer, *, has_head: bool) -> float:
    """How far a recorded output sits from the referee's re-run, in tolerances (≤ 1: honest)."""
    if not has_head:
        return tolerance.HOP.excess(np.asarray(recorded, dtype=np.float32), result.output)
    logits = result.output[-1]
    best = float(logits.max())
    if isinstance(recorded, tuple):  # the largest logits of a sampled job
        indices, values = recorded
        if indices.min(initial=0) < 0 or indices.max(initial=0) >= logits.shape[0]:
            return float("inf")
        excess = tolerance.LOGITS.excess(values, logits[indices])
        if int(np.argmax(logits)) not in set(indices.tolist()):
            excess = max(excess, (best - float(values.max(initial=-np.inf))) / tolerance.LOGIT_GAP)
        return excess
    token = int(np.asarray(recorded).reshape(-1)[0])
    if not 0 <= token < logits.shape[0]:
        return float("inf")
    return (best - float(logits[token])) / tolerance.LOGIT_GAP


def first_bad_step(work: HopWork, *, steps: int) -> Finding | None:
    """Phase 1 for one hop: the first step whose recorded output leaves the tolerance, or None."""
    runtime = work.load()
    for step, result in rerun(runtime, work.inputs, until=steps):
        excess = output_excess(result, work.outputs[step], has_head=runtime.spec.has_head)
        if excess > 1:
            return Finding(step=step, hop=work.hop, excess=excess)
    return None


def locate(hops: Sequence[HopWork], *, steps: int) -> Finding | None:
    """Phase 1 for the job: the first (step, hop) whose output leaves the tolerance, or None."""
    found = [f for work in hops if (f := first_bad_step(work, steps=steps)) is not None]
    return min(found, key=lambda f: (f.step, f.hop)) if found else None


def referee_states(work: HopWork, *, step: int) -> np.ndarray:
    """The referee's own layer_hidden [n_layers, S, H] of the hop at `step`, from the recorded inputs."""
    runtime = work.load()
    last: StepOutput | None = None
    for _, last in rerun(runtime, work.inputs, until=step + 1):  # noqa: B007  # the last step's is wanted
        pass
    assert last is not None
    return np.asarray(last.layer_hidden)


def layer_excess(layer: ShardRuntime, inputs: Sequence[np.ndarray], claimed: np.ndarray) -> tuple[float, np.ndarray]:
    """Re-execute one layer (a one-layer shard) over the positions of every step in `inputs` (token ids, or the
    provider's revealed states of the layer before, [S, H] per step) as one prefill; judge the claimed output at
    the last step's positions. Returns (excess, the referee's output there)."""
    if layer.spec.has_embedding:
        fed = np.concatenate([np.asarray(x).reshape(1, -1) for x in inputs], axis=1).astype(np.int64)
    else:
        fed = np.concatenate([np.asarray(x, dtype=np.float32).reshape(1, -1, layer.config.hidden) for x in inputs], 1)
    layer.open("referee-layer")
    try:
        ours = layer.step("referee-layer", fed).layer_hidden[0, -claimed.shape[0] :]
    finally:
        layer.close("referee-layer")
    return tolerance.LAYER.excess(claimed, ours), ours


def head_logits(weights: tuple[np.ndarray, np.ndarray], state: np.ndarray, *, eps: float) -> np.ndarray:
    """The LM head on one position's hidden state: RMS norm with the output norm's weight, then the vocabulary."""
    norm_weight, table = weights
    x = np.asarray(state, dtype=np.float32)
    normed = x / np.sqrt(np.mean(x * x) + eps) * norm_weight
    return np.asarray(table @ normed, dtype=np.float32)


def digest(*arrays: np.ndarray) -> str:
    """SHA-256 over arrays' bytes (float32 or int64, little-endian): names evidence without carrying it."""
    h = hashlib.sha256()
    for array in arrays:
        a = np.asarray(array)
        h.update(np.ascontiguousarray(a, dtype="<i8" if a.dtype.kind in "iu" else "<f4").tobytes())
    return h.hexdigest()
