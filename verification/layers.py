"""The referee's single layers and LM head, built from the model's GGUF (checked against the SHA-256 it was imported
under) and kept per process: re-executing one layer needs a one-layer graph of exactly the model's quantisation."""

from __future__ import annotations

import threading

import numpy as np

from config.errors import Conflict
from inference.config import ShardSpec
from inference.gguf_model import GGUFModel, file_sha256
from inference.runtime import ShardRuntime
from inference.shard_builder import build_shard
from market.models import Job, LanguageModel

_lock = threading.Lock()
_models: dict[int, GGUFModel] = {}
_layers: dict[tuple[int, int], ShardRuntime] = {}
_heads: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _gguf(model: LanguageModel) -> GGUFModel:
    if model.pk not in _models:
        path = model.source_path
        if not path or file_sha256(path) != model.source_sha256:
            raise Conflict(
                f"the referee needs {model.name}'s GGUF as imported (SHA-256 {model.source_sha256[:12]}…); "
                f"{path or 'no path'} is missing or differs: run import_model again",
                code="referee_model_missing",
            )
        _models[model.pk] = GGUFModel(path)
    return _models[model.pk]


def one_layer(model: LanguageModel, layer: int) -> ShardRuntime:
    """A one-layer shard of `model` (layer `layer` of the model, its quantisation); the first takes token ids."""
    with _lock:
        key = (model.pk, layer)
        if key not in _layers:
            gguf = _gguf(model)
            spec = ShardSpec(model.name, model.quant, layer, layer + 1, gguf.config.n_layers)
            _layers[key] = ShardRuntime(build_shard(gguf, spec).SerializeToString())
        return _layers[key]


def head_weights(model: LanguageModel) -> tuple[np.ndarray, np.ndarray]:
    """(output norm weight [H], vocabulary table [vocab, H]) of the LM head."""
    with _lock:
        if model.pk not in _heads:
            gguf = _gguf(model)
            table = gguf.embedding() if gguf.tied_head else gguf.output_weight()
            _heads[model.pk] = (gguf.norm(None, "output_norm"), np.asarray(table, dtype=np.float32))
        return _heads[model.pk]


def rms_eps(job: Job) -> float:
    return float(job.model.config.get("rms_eps", 1e-5))
