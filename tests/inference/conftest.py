"""Fixtures for the inference tests: a tiny random GGUF (fast) and the real SmolLM2 GGUF (slow).

Shards are built from the GGUF, serialised with `SerializeToString()` and loaded from bytes, the way a
provider loads a downloaded shard. Tiny shard bytes are cached per session and every call makes fresh
runtimes, so no test sees another's sessions; real-model runtimes are built once per session (an f32
build of the whole model takes seconds and 540 MB) and shared, so tests on them use unique session ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from inference.config import ShardSpec, parse_plan
from inference.generate import LocalChain
from inference.gguf_model import GGUFModel, smollm2_path
from inference.runtime import ShardRuntime
from inference.shard_builder import build_shard
from inference.tiny import write_tiny_gguf
from inference.tokenizer import ChatTokenizer

ChainFactory = Callable[..., LocalChain]


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny-4.gguf", n_layers=4, seed=0)


@pytest.fixture(scope="session")
def tiny_gguf_6(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny-6.gguf", n_layers=6, seed=1)


@pytest.fixture(scope="session")
def tiny_model(tiny_gguf: Path) -> GGUFModel:
    return GGUFModel(tiny_gguf)


@pytest.fixture(scope="session")
def tiny_model_6(tiny_gguf_6: Path) -> GGUFModel:
    return GGUFModel(tiny_gguf_6)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model: GGUFModel) -> ChatTokenizer:
    return ChatTokenizer.from_gguf(tiny_model)


@pytest.fixture(scope="session")
def tiny_shard_bytes() -> Callable[[GGUFModel, str, int, int], bytes]:
    """Serialised shard of a tiny model, built once per (model, quant, layer range)."""
    cache: dict[tuple[str, str, int, int], bytes] = {}

    def get(model: GGUFModel, quant: str, first: int, end: int) -> bytes:
        key = (str(model.path), quant, first, end)
        if key not in cache:
            spec = ShardSpec(model.path.stem, quant, first, end, model.config.n_layers)
            cache[key] = build_shard(model, spec).SerializeToString()
        return cache[key]

    return get


@pytest.fixture(scope="session")
def tiny_runtimes(
    tiny_model: GGUFModel, tiny_shard_bytes: Callable[[GGUFModel, str, int, int], bytes]
) -> Callable[..., list[ShardRuntime]]:
    """Fresh runtimes for a plan ("whole", "each", "0-1,1-3,3-4") and a quant; the 4-layer model by default."""

    def make(plan: str, quant: str, model: GGUFModel | None = None) -> list[ShardRuntime]:
        model = model or tiny_model
        ranges = parse_plan(plan, n_layers=model.config.n_layers)
        return [ShardRuntime(tiny_shard_bytes(model, quant, first, end)) for first, end in ranges]

    return make


@pytest.fixture(scope="session")
def tiny_chain(tiny_runtimes: Callable[..., list[ShardRuntime]]) -> ChainFactory:
    def make(plan: str, quant: str, model: GGUFModel | None = None) -> LocalChain:
        return LocalChain(tiny_runtimes(plan, quant, model))

    return make


@pytest.fixture(scope="session")
def step_chain() -> Callable[[Sequence[ShardRuntime], str, Sequence[int]], tuple[np.ndarray, np.ndarray]]:
    """One step through shards by hand: (logits [vocab], every shard's layer_hidden stacked [n_layers, H])."""

    def step(
        runtimes: Sequence[ShardRuntime], session_id: str, token_ids: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        data = np.asarray([token_ids], dtype=np.int64)
        hidden = []
        for runtime in runtimes:
            out = runtime.step(session_id, data)
            data = out.output
            hidden.append(out.newest)
        return data[0], np.concatenate(hidden)

    return step


@pytest.fixture(scope="session")
def real_model() -> GGUFModel:
    return GGUFModel(smollm2_path())


@pytest.fixture(scope="session")
def real_tokenizer(real_model: GGUFModel) -> ChatTokenizer:
    return ChatTokenizer.from_gguf(real_model)


@pytest.fixture(scope="session")
def real_chain(real_model: GGUFModel) -> ChainFactory:
    """A chain of real-model shards for a plan and quant, built once per session and then shared."""
    cache: dict[tuple[str, str], LocalChain] = {}

    def get(plan: str, quant: str) -> LocalChain:
        if (plan, quant) not in cache:
            runtimes = []
            for first, end in parse_plan(plan, n_layers=real_model.config.n_layers):
                spec = ShardSpec("smollm2", quant, first, end, real_model.config.n_layers)
                runtimes.append(ShardRuntime(build_shard(real_model, spec).SerializeToString()))
            cache[(plan, quant)] = LocalChain(runtimes)
        return cache[(plan, quant)]

    return get
