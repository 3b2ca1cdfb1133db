"""Run ONNX shards with a KV cache per session.

The cache stays inside ONNX Runtime as OrtValues: each step's present keys/values become the next step's past
without a round trip through numpy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from inference.config import LlamaConfig, ShardSpec
from inference.errors import BadInput, ContextOverflow, ShardIntegrityError, UnknownSession

_threads_lock = threading.Lock()
_threads_configured: int | None = None


def configure_threads(threads: int = 0) -> int:
    """Give every shard in this process one global intra-op pool instead of one pool per session.

    Per-session pools put several sets of spinning threads on the same cores, which halves the
    speed of three shards in one process. Must run before the first session; later calls are no-ops.
    Returns the pool size in effect (0 means onnxruntime picks, one thread per core).
    """
    global _threads_configured
    with _threads_lock:
        if _threads_configured is None:
            ort.capi._pybind_state.set_global_thread_pool_sizes(threads, 1)
            _threads_configured = threads
        return _threads_configured


def _session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.use_per_session_threads = False
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def verify_sha256(data: bytes, sha256: str, *, what: str) -> None:
    """Refuse bytes that do not hash to the SHA-256 they were registered under."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256.lower():
        raise ShardIntegrityError(
            f"{what} hashes to {actual[:16]}…, not the expected {sha256[:16]}…; "
            "it is corrupt or was tampered with and will not be loaded"
        )


def read_verified(path: str | os.PathLike[str], sha256: str | None) -> bytes:
    """The bytes of a shard file, refused when they do not hash to the expected SHA-256."""
    data = Path(path).read_bytes()
    if sha256 is not None:
        verify_sha256(data, sha256, what=f"shard file {Path(path).name}")
    return data


@dataclasses.dataclass
class StepOutput:
    """What one shard returns for one step: hidden states or logits, and the per-layer hidden states."""

    output: np.ndarray  # hidden_out [1, S, H] float32, or logits [1, vocab] for the last shard
    layer_hidden: np.ndarray  # [n_layers, S, H] float32: every layer's output at every position of the step

    @property
    def newest(self) -> np.ndarray:
        """Every layer's output at the newest position, [n_layers, H]."""
        return self.layer_hidden[:, -1]


@dataclasses.dataclass
class _Session:
    past: list[ort.OrtValue]
    position: int = 0


class ShardRuntime:
    """One loaded shard and the KV caches of the sessions (jobs) it is serving."""

    def __init__(self, source: str | os.PathLike[str] | bytes, *, sha256: str | None = None) -> None:
        configure_threads(int(os.environ.get("INFERENCE_THREADS", "0")))
        if isinstance(source, bytes):
            data = source
            if sha256 is not None:
                verify_sha256(data, sha256, what="shard bytes")
        else:
            data = read_verified(source, sha256)
        self.session = ort.InferenceSession(data, _session_options(), providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.config = LlamaConfig.from_dict(json.loads(meta["config"]))
        self.spec = ShardSpec(**json.loads(meta["spec"]))
        self.layers = range(self.spec.first_layer, self.spec.end_layer)
        self._present_names = [f"present_{kind}.{i}" for i in self.layers for kind in ("key", "value")]
        self._past_names = [f"past_{kind}.{i}" for i in self.layers for kind in ("key", "value")]
        self._main_output = "logits" if self.spec.has_head else "hidden_out"
        self._input_name = "input_ids" if self.spec.has_embedding else "hidden_in"
        self._output_names = [self._main_output, "layer_hidden", *self._present_names]
        self._sessions: dict[str, _Session] = {}

    @property
    def sessions(self) -> list[str]:
        return list(self._sessions)

    def open(self, session_id: str) -> None:
        """Start a session with an empty cache (replacing any cache the id had)."""
        empty = np.zeros((1, self.config.n_kv_heads, 0, self.config.head_dim), dtype=np.float32)
        self._sessions[session_id] = _Session(past=[ort.OrtValue.ortvalue_from_numpy(empty) for _ in self._past_names])

    def close(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def position(self, session_id: str) -> int:
        return self._get(session_id).position

    def _get(self, session_id: str) -> _Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise UnknownSession(f"session {session_id!r} is not open on shard {self.spec.shard_id}") from None

    def _checked_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Token ids [1, S] in the vocabulary (first shard) or finite hidden states [1, S, H]; else BadInput."""
        if self.spec.has_embedding:
            if inputs.ndim != 2 or inputs.shape[0] != 1 or inputs.shape[1] < 1 or inputs.dtype.kind not in "iu":
                raise BadInput(
                    f"{self.spec.shard_id} takes token ids of shape [1, S>=1], got {inputs.dtype}{inputs.shape}"
                )
            if inputs.min() < 0 or inputs.max() >= self.config.vocab:
                raise BadInput(f"token ids must be in 0..{self.config.vocab - 1}")
            return np.ascontiguousarray(inputs, dtype=np.int64)
        if inputs.ndim != 3 or inputs.shape[0] != 1 or inputs.shape[1] < 1 or inputs.shape[2] != self.config.hidden:
            raise BadInput(
                f"{self.spec.shard_id} takes hidden states of shape [1, S>=1, {self.config.hidden}], got {inputs.shape}"
            )
        if inputs.dtype.kind != "f" or not np.isfinite(inputs).all():
            raise BadInput("hidden states must be finite floating-point numbers")
        return np.ascontiguousarray(inputs, dtype=np.float32)

    def step(self, session_id: str, inputs: np.ndarray) -> StepOutput:
        """Run new tokens (first shard: ids [1, S]) or hidden states ([1, S, H]) through the shard."""
        state = self._get(session_id)
        checked = self._checked_inputs(inputs)
        seq = checked.shape[1]
        if state.position + seq > self.config.max_context:
            raise ContextOverflow(f"{state.position + seq} positions exceed the context of {self.config.max_context}")
        # One call with OrtValues in and out (not an IOBinding with a bind call per tensor): on a provider that wakes
        # for each step of each token, fewer calls from Python is most of a shard step's overhead.
        feeds = {
            self._input_name: ort.OrtValue.ortvalue_from_numpy(checked),
            "positions": ort.OrtValue.ortvalue_from_numpy(
                np.arange(state.position, state.position + seq, dtype=np.int64)
            ),
        }
        feeds.update(zip(self._past_names, state.past, strict=True))
        outputs = self.session.run_with_ort_values(self._output_names, feeds)
        state.past = list(outputs[2:])
        state.position += seq
        return StepOutput(output=outputs[0].numpy(), layer_hidden=outputs[1].numpy())
