"""Model hyperparameters and shard metadata as validated dataclasses."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from inference.errors import BadShardPlan

QUANTS = ("f32", "q4")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyperparameters of a Llama-architecture decoder, as read from GGUF metadata."""

    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    ffn: int
    vocab: int
    rope_theta: float
    rms_eps: float
    max_context: int

    def __post_init__(self) -> None:
        if self.hidden % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"inconsistent head counts: hidden={self.hidden} heads={self.n_heads}/{self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError("rotary embedding needs an even head dimension")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LlamaConfig:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """One contiguous range of decoder layers [first_layer, end_layer) of a model.

    The first shard also holds the token embedding (it takes token ids), the last one the final
    norm and the LM head (it returns logits); a shard that is both is the whole model.
    """

    model: str
    quant: str
    first_layer: int
    end_layer: int
    n_layers_total: int

    def __post_init__(self) -> None:
        if self.quant not in QUANTS:
            raise BadShardPlan(f"unknown quantisation {self.quant!r}; expected one of {', '.join(QUANTS)}")
        if not 0 <= self.first_layer < self.end_layer <= self.n_layers_total:
            raise BadShardPlan(f"layer range {self.first_layer}-{self.end_layer} is not inside 0-{self.n_layers_total}")

    @property
    def shard_id(self) -> str:
        return f"{self.model}:{self.quant}:{self.first_layer}-{self.end_layer}"

    @property
    def has_embedding(self) -> bool:
        return self.first_layer == 0

    @property
    def has_head(self) -> bool:
        return self.end_layer == self.n_layers_total

    @property
    def n_layers(self) -> int:
        return self.end_layer - self.first_layer


_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def parse_plan(plan: str, *, n_layers: int) -> list[tuple[int, int]]:
    """Parse "0-10,10-20,20-30" into ranges that must tile [0, n_layers) without gaps or overlap.

    "whole" is the single range covering every layer; "each" is one range per layer.
    """
    text = plan.strip().lower()
    if text == "whole":
        ranges = [(0, n_layers)]
    elif text == "each":
        ranges = [(i, i + 1) for i in range(n_layers)]
    else:
        ranges = []
        for part in text.split(","):
            match = _RANGE.match(part)
            if not match:
                raise BadShardPlan(f"cannot read {part.strip()!r} as a layer range such as 0-10")
            ranges.append((int(match.group(1)), int(match.group(2))))
    validate_plan(ranges, n_layers=n_layers)
    return ranges


def validate_plan(ranges: list[tuple[int, int]], *, n_layers: int) -> None:
    if n_layers < 1:
        raise BadShardPlan(f"a model needs at least one layer, not {n_layers}")
    expected_start = 0
    for first, end in ranges:
        if first != expected_start:
            raise BadShardPlan(f"range {first}-{end} should start at layer {expected_start}")
        if end <= first:
            raise BadShardPlan(f"range {first}-{end} is empty")
        expected_start = end
    if expected_start != n_layers:
        raise BadShardPlan(f"the plan ends at layer {expected_start} but the model has {n_layers} layers")
