"""Reads of the market app."""

from __future__ import annotations

from django.core.files.storage import default_storage

from config.errors import NotFound
from inference.config import parse_plan
from inference.generate import LocalChain
from inference.runtime import ShardRuntime
from inference.tokenizer import ChatTokenizer
from market.models import LanguageModel, Shard


def model_get(*, name: str, quant: str) -> LanguageModel:
    model = LanguageModel.objects.filter(name=name, quant=quant).first()
    if model is None:
        raise NotFound(
            f"model {name} ({quant}) is not imported; run: manage.py import_model {name} --quant {quant}",
            code="unknown_model",
        )
    return model


def shard_chain(*, model: LanguageModel, plan: str | None) -> list[Shard]:
    """The registered shards that run the model front to back.

    With a plan ("0-10,10-20,20-30", "whole", "each") exactly those shards; with none, the longest registered
    shard that is not the whole model at each step, so `--shards` alone runs a real chain.
    """
    n_layers = int(model.config["n_layers"])
    by_range = {(s.first_layer, s.end_layer): s for s in model.shards.all()}
    if plan is not None:
        ranges = parse_plan(plan, n_layers=n_layers)
        missing = [f"{a}-{b}" for a, b in ranges if (a, b) not in by_range]
        if missing:
            raise NotFound(
                f"{model} has no shard {', '.join(missing)}; import it with --plan {plan}", code="shard_unavailable"
            )
        return [by_range[r] for r in ranges]
    chain, layer = [], 0
    while layer < n_layers:
        candidates = [s for (a, b), s in by_range.items() if a == layer and (a, b) != (0, n_layers)]
        if not candidates:
            raise NotFound(f"{model} has no shard starting at layer {layer}", code="shard_unavailable")
        best = max(candidates, key=lambda s: s.end_layer)
        chain.append(best)
        layer = best.end_layer
    return chain


def shard_runtime(shard: Shard) -> ShardRuntime:
    """Load a stored shard, refusing bytes that do not match its registered SHA-256."""
    return ShardRuntime(default_storage.path(str(shard.file.name)), sha256=shard.sha256)


def local_chain(shards: list[Shard]) -> LocalChain:
    return LocalChain(shard_runtime(s) for s in shards)


def model_tokenizer(model: LanguageModel) -> ChatTokenizer:
    with default_storage.open(str(model.tokenizer_file.name), "rb") as handle:
        return ChatTokenizer.from_json(handle.read().decode())
