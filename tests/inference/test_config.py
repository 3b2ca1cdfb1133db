"""Layer plans tile the model exactly; shard specs name their layer range and know their ends."""

from __future__ import annotations

import pytest

from inference.config import LlamaConfig, ShardSpec, parse_plan
from inference.errors import BadShardPlan


def test_parse_plan_reads_contiguous_ranges() -> None:
    assert parse_plan("0-10,10-20,20-30", n_layers=30) == [(0, 10), (10, 20), (20, 30)]


def test_parse_plan_tolerates_spaces_and_uneven_ranges() -> None:
    assert parse_plan(" 0 - 1 , 1-3,3 -4 ", n_layers=4) == [(0, 1), (1, 3), (3, 4)]


def test_parse_plan_whole_is_one_range_over_every_layer() -> None:
    assert parse_plan("whole", n_layers=30) == [(0, 30)]
    assert parse_plan("WHOLE", n_layers=4) == [(0, 4)]


def test_parse_plan_each_is_one_range_per_layer() -> None:
    assert parse_plan("each", n_layers=4) == [(0, 1), (1, 2), (2, 3), (3, 4)]


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ("0-10,11-30", "should start at layer 10"),  # gap
        ("0-10,5-30", "should start at layer 10"),  # overlap
        ("10-30", "should start at layer 0"),  # first layers missing
        ("0-10,10-10,10-30", "10-10 is empty"),
        ("0-10,10-0", "10-0 is empty"),  # backwards
        ("0-10,10-20", "ends at layer 20 but the model has 30 layers"),  # last layers missing
        ("0-10,10-31", "ends at layer 31 but the model has 30 layers"),  # past the last layer
        ("0-10,10-20,20-30,30-40", "ends at layer 40"),
    ],
)
def test_parse_plan_rejects_plans_that_do_not_tile_the_model(plan: str, message: str) -> None:
    with pytest.raises(BadShardPlan, match=message):
        parse_plan(plan, n_layers=30)


@pytest.mark.parametrize("plan", ["", "garbage", "0-10;10-30", "0-10,10-30,", "-1-30", "0:30", "0-1e1,10-30", "all"])
def test_parse_plan_rejects_garbage_with_an_example_of_the_format(plan: str) -> None:
    with pytest.raises(BadShardPlan, match="as a layer range such as 0-10"):
        parse_plan(plan, n_layers=30)


def test_bad_shard_plan_has_a_stable_code() -> None:
    with pytest.raises(BadShardPlan) as caught:
        parse_plan("0-5", n_layers=30)
    assert caught.value.code == "bad_shard_plan"


def test_shard_id_names_model_quant_and_layer_range() -> None:
    assert ShardSpec("smollm2", "q4", 10, 20, 30).shard_id == "smollm2:q4:10-20"
    assert ShardSpec("smollm2", "f32", 0, 30, 30).shard_id == "smollm2:f32:0-30"


def test_shard_ids_differ_between_quants_and_ranges() -> None:
    ranges = [(0, 10), (0, 11)]
    ids = {ShardSpec("m", quant, first, end, 30).shard_id for quant in ("f32", "q4") for first, end in ranges}
    assert len(ids) == 4


@pytest.mark.parametrize(
    ("first", "end", "embedding", "head"),
    [(0, 10, True, False), (10, 20, False, False), (20, 30, False, True), (0, 30, True, True)],
)
def test_first_shard_holds_embedding_and_last_holds_head(first: int, end: int, embedding: bool, head: bool) -> None:
    spec = ShardSpec("smollm2", "f32", first, end, 30)
    assert (spec.has_embedding, spec.has_head) == (embedding, head)
    assert spec.n_layers == end - first


@pytest.mark.parametrize(("first", "end"), [(5, 5), (6, 5), (-1, 5), (25, 31)])
def test_shard_spec_refuses_a_range_outside_the_model(first: int, end: int) -> None:
    with pytest.raises(BadShardPlan, match="is not inside 0-30"):
        ShardSpec("smollm2", "f32", first, end, 30)


def test_shard_spec_refuses_an_unknown_quantisation() -> None:
    with pytest.raises(BadShardPlan, match="unknown quantisation 'q8'"):
        ShardSpec("smollm2", "q8", 0, 30, 30)


def test_llama_config_round_trips_through_a_dict_and_derives_head_dim() -> None:
    config = LlamaConfig(30, 576, 9, 3, 1536, 49152, 100000.0, 1e-5, 8192)
    assert config.head_dim == 64
    assert LlamaConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(("hidden", "heads", "kv_heads"), [(576, 7, 7), (576, 9, 2), (27, 9, 3)])
def test_llama_config_refuses_inconsistent_heads_or_odd_head_dim(hidden: int, heads: int, kv_heads: int) -> None:
    with pytest.raises(ValueError, match="head"):
        LlamaConfig(30, hidden, heads, kv_heads, 1536, 49152, 100000.0, 1e-5, 8192)


@pytest.mark.parametrize("plan", ["whole", "each", "0-0"])
def test_parse_plan_refuses_a_model_without_layers(plan: str) -> None:
    with pytest.raises(BadShardPlan):
        parse_plan(plan, n_layers=0)
