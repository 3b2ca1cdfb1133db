"""A chain of shards computes what the whole model computes, step by step, in f32 and in exact 4-bit.

Everything runs on the tiny random GGUF (4 layers, hidden 64), so the whole file takes seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypedDict

import numpy as np
import onnx
import pytest

from inference.config import ShardSpec
from inference.errors import BadInput, ContextOverflow, UnknownSession
from inference.generate import LocalChain, Sampler, SamplingParams, generate
from inference.gguf_model import GGUFModel
from inference.runtime import ShardRuntime
from inference.shard_builder import build_shard

Runtimes = Callable[..., list[ShardRuntime]]
Chain = Callable[..., LocalChain]
Step = Callable[[Sequence[ShardRuntime], str, Sequence[int]], tuple[np.ndarray, np.ndarray]]


class Tolerance(TypedDict):
    """Keyword arguments for np.testing.assert_allclose."""

    atol: float
    rtol: float


# Shards run the same kernels on the same shapes as the whole model: measured max |difference| 0.0 for logits
# (magnitude up to ~29) and per-layer hidden states, both quants. The tolerance leaves room for a reordered float sum.
CHAIN_TOL = Tolerance(atol=1e-4, rtol=1e-4)
# A prefill of S tokens and S single-token steps run different kernel paths: measured 1.7e-5 on logits ~26.
PREFILL_TOL = Tolerance(atol=2e-4, rtol=1e-4)
# q4 keeps the GGUF's exact values, only the summation order differs (MatMulNBits plus the block-offset term):
# measured 1.8e-5 on logits, 4.2e-6 on hidden states.
Q4_TOL = Tolerance(atol=5e-4, rtol=1e-4)

PROMPT = [124, 214, 176, 44, 160, 242, 57, 234, 154, 176, 88, 15]
FORCED = [14, 51, 88, 125, 162, 199, 236, 14, 51, 88, 125, 162, 199, 236, 14, 51, 88, 125, 162, 199]  # 20 decode steps
PLANS = ["whole", "0-1,1-3,3-4", "each"]
QUANTS = ["f32", "q4"]
WARM = SamplingParams(temperature=1.0)


def _forced_run(step: Step, runtimes: Sequence[ShardRuntime], session_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Prefill PROMPT, then feed the FORCED tokens one at a time: logits [21, vocab] and hidden [21, layers, H]."""
    for runtime in runtimes:
        runtime.open(session_id)
    steps = [step(runtimes, session_id, ids) for ids in [PROMPT, *([t] for t in FORCED)]]
    for runtime in runtimes:
        runtime.close(session_id)
    return np.stack([s[0] for s in steps]), np.stack([s[1] for s in steps])


def _last_logits(chain: LocalChain, session_id: str, chunks: Sequence[Sequence[int]]) -> np.ndarray:
    chain.open(session_id)
    for chunk in chunks:
        logits = chain.forward(session_id, chunk)
    chain.close(session_id)
    return logits


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("plan", PLANS)
def test_chain_logits_match_the_whole_model_at_every_step(
    tiny_runtimes: Runtimes, step_chain: Step, plan: str, quant: str
) -> None:
    whole, _ = _forced_run(step_chain, tiny_runtimes("whole", quant), "s")
    chain, _ = _forced_run(step_chain, tiny_runtimes(plan, quant), "s")
    assert chain.shape == whole.shape == (1 + len(FORCED), 262)
    np.testing.assert_allclose(chain, whole, **CHAIN_TOL)


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("plan", PLANS)
def test_chain_layer_hidden_states_match_the_whole_model(
    tiny_runtimes: Runtimes, step_chain: Step, plan: str, quant: str
) -> None:
    _, whole = _forced_run(step_chain, tiny_runtimes("whole", quant), "s")
    _, chain = _forced_run(step_chain, tiny_runtimes(plan, quant), "s")
    assert chain.shape == whole.shape == (1 + len(FORCED), 4, 64)
    np.testing.assert_allclose(chain, whole, **CHAIN_TOL)
    # Every layer moves the hidden state, so a shard that skipped or repeated a layer could not pass.
    assert np.abs(np.diff(whole, axis=1)).max(axis=-1).min() > 0.1


def test_layer_hidden_is_each_layers_output_at_every_position(tiny_runtimes: Runtimes) -> None:
    *bodies, head = tiny_runtimes("each", "f32")
    data: np.ndarray = np.asarray([PROMPT])
    for runtime in bodies:
        runtime.open("s")
        out = runtime.step("s", data)
        assert out.output.shape == (1, len(PROMPT), 64)
        assert out.layer_hidden.shape == (1, len(PROMPT), 64)
        np.testing.assert_array_equal(out.layer_hidden, out.output)
        np.testing.assert_array_equal(out.newest, out.output[:, -1])
        data = out.output
    head.open("s")
    assert head.step("s", data).layer_hidden.shape == (1, len(PROMPT), 64)


@pytest.mark.parametrize("quant", QUANTS)
def test_uneven_chain_of_a_six_layer_model_matches_it(
    tiny_model_6: GGUFModel, tiny_runtimes: Runtimes, step_chain: Step, quant: str
) -> None:
    whole, whole_hidden = _forced_run(step_chain, tiny_runtimes("whole", quant, tiny_model_6), "s")
    chain, chain_hidden = _forced_run(step_chain, tiny_runtimes("0-2,2-5,5-6", quant, tiny_model_6), "s")
    assert chain_hidden.shape[1] == 6
    np.testing.assert_allclose(chain, whole, **CHAIN_TOL)
    np.testing.assert_allclose(chain_hidden, whole_hidden, **CHAIN_TOL)


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("plan", PLANS)
def test_chain_generates_the_same_tokens_as_the_whole_model(tiny_chain: Chain, plan: str, quant: str) -> None:
    whole, chain = tiny_chain("whole", quant), tiny_chain(plan, quant)
    greedy = generate(whole, PROMPT, max_new_tokens=20).tokens
    assert len(greedy) == 20 and len(set(greedy)) > 10  # a varied sequence, not one token repeated
    assert generate(chain, PROMPT, max_new_tokens=20).tokens == greedy
    sampled = SamplingParams(temperature=WARM.temperature, seed=11)
    assert (
        generate(chain, PROMPT, max_new_tokens=20, sampling=sampled).tokens
        == generate(whole, PROMPT, max_new_tokens=20, sampling=sampled).tokens
    )


def test_q4_logits_agree_with_f32_from_the_same_weights(tiny_runtimes: Runtimes, step_chain: Step) -> None:
    f32_logits, f32_hidden = _forced_run(step_chain, tiny_runtimes("whole", "f32"), "s")
    q4_logits, q4_hidden = _forced_run(step_chain, tiny_runtimes("whole", "q4"), "s")
    np.testing.assert_allclose(q4_logits, f32_logits, **Q4_TOL)
    np.testing.assert_allclose(q4_hidden, f32_hidden, **Q4_TOL)


def test_q4_shards_keep_the_linear_weights_four_bit(tiny_model: GGUFModel) -> None:
    def count(quant: str) -> int:
        graph = build_shard(tiny_model, ShardSpec("tiny", quant, 1, 3, 4)).graph
        return sum(node.op_type == "MatMulNBits" for node in graph.node)

    # Per layer: fused q/k/v, attention output, fused gate/up, down.
    assert (count("q4"), count("f32")) == (2 * 4, 0)


def test_shard_graph_is_valid_onnx_with_its_metadata(tiny_model: GGUFModel) -> None:
    proto = build_shard(tiny_model, ShardSpec("tiny", "f32", 1, 3, 4))
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["shard_id"] == "tiny:f32:1-3"
    assert {i.name for i in proto.graph.input} >= {"hidden_in", "positions", "past_key.1", "past_value.2"}
    assert {o.name for o in proto.graph.output} >= {"hidden_out", "layer_hidden", "present_key.2"}


def test_build_shard_refuses_a_spec_for_another_layer_count(tiny_model_6: GGUFModel) -> None:
    with pytest.raises(ValueError, match="spec says 4 layers, the model has 6"):
        build_shard(tiny_model_6, ShardSpec("tiny", "f32", 0, 4, 4))


@pytest.mark.parametrize("plan", ["whole", "0-1,1-3,3-4"])
def test_token_by_token_decoding_equals_one_prefill(tiny_chain: Chain, plan: str) -> None:
    chain, sequence = tiny_chain(plan, "f32"), PROMPT + FORCED
    once = _last_logits(chain, "once", [sequence])
    one_by_one = _last_logits(chain, "one", [[t] for t in sequence])
    in_chunks = _last_logits(chain, "chunks", [sequence[:5], sequence[5:19], sequence[19:]])
    np.testing.assert_allclose(one_by_one, once, **PREFILL_TOL)
    np.testing.assert_allclose(in_chunks, once, **PREFILL_TOL)


def test_the_cache_carries_the_earlier_tokens(tiny_chain: Chain) -> None:
    chain = tiny_chain("0-1,1-3,3-4", "f32")
    changed_start = [PROMPT[0] + 1, *PROMPT[1:]]
    same = _last_logits(chain, "a", [PROMPT, FORCED[:3]])
    other = _last_logits(chain, "b", [changed_start, FORCED[:3]])
    assert np.abs(same - other).max() > 0.1
    alone = _last_logits(chain, "c", [FORCED[:3]])  # same newest tokens, no history at all
    assert np.abs(same - alone).max() > 0.1


def test_interleaved_sessions_on_the_same_runtimes_do_not_disturb_each_other(tiny_chain: Chain) -> None:
    chain = tiny_chain("each", "f32")
    other_prompt = PROMPT[::-1]
    alone_a = [_last_logits(chain, "solo-a", [PROMPT, FORCED[: i + 1]]) for i in range(5)]
    alone_b = [_last_logits(chain, "solo-b", [other_prompt, FORCED[::-1][: i + 1]]) for i in range(5)]
    chain.open("a")
    chain.open("b")
    chain.forward("a", PROMPT)
    chain.forward("b", other_prompt)
    for i in range(5):
        np.testing.assert_allclose(chain.forward("a", [FORCED[i]]), alone_a[i], **CHAIN_TOL)
        np.testing.assert_allclose(chain.forward("b", [FORCED[::-1][i]]), alone_b[i], **CHAIN_TOL)
    assert [shard.position("a") for shard in chain.shards] == [len(PROMPT) + 5] * 4
    assert sorted(chain.shards[2].sessions) == ["a", "b"]


def test_stepping_a_closed_session_raises_unknown_session(tiny_chain: Chain) -> None:
    chain = tiny_chain("0-1,1-3,3-4", "f32")
    chain.open("kept")
    chain.open("gone")
    chain.forward("gone", PROMPT)
    chain.close("gone")
    with pytest.raises(UnknownSession, match="'gone' is not open on shard tiny-4:f32:0-1") as caught:
        chain.forward("gone", [1])
    assert caught.value.code == "unknown_session"
    with pytest.raises(UnknownSession):
        chain.shards[1].step("never-opened", np.zeros((1, 1, 64), dtype=np.float32))
    assert chain.forward("kept", PROMPT).shape == (262,)


def test_reopening_a_session_starts_from_an_empty_cache(tiny_chain: Chain) -> None:
    chain = tiny_chain("whole", "f32")
    fresh = _last_logits(chain, "x", [PROMPT])
    chain.open("x")
    chain.forward("x", FORCED)
    chain.open("x")
    assert chain.shards[0].position("x") == 0
    np.testing.assert_allclose(chain.forward("x", PROMPT), fresh, **CHAIN_TOL)


def test_a_step_past_the_context_is_refused_and_keeps_the_cache(tiny_runtimes: Runtimes) -> None:
    (runtime,) = tiny_runtimes("whole", "f32")  # the tiny model's context is 256 positions
    runtime.open("s")
    runtime.step("s", np.ones((1, 250), dtype=np.int64))
    with pytest.raises(ContextOverflow, match="257 positions exceed the context of 256"):
        runtime.step("s", np.ones((1, 7), dtype=np.int64))
    assert runtime.position("s") == 250
    assert runtime.step("s", np.ones((1, 6), dtype=np.int64)).output.shape == (1, 262)


def test_local_chain_refuses_shards_that_do_not_connect(tiny_runtimes: Runtimes) -> None:
    first, middle, last = tiny_runtimes("0-1,1-3,3-4", "f32")
    for broken in ([first, middle], [middle, last], [first, last], [first, middle, middle, last], []):
        with pytest.raises(ValueError, match="a chain must start|is not followed by"):
            LocalChain(broken)


def test_sampling_with_a_seed_is_reproducible_and_seeds_matter(tiny_chain: Chain) -> None:
    chain = tiny_chain("0-1,1-3,3-4", "q4")

    def sample(seed: int) -> list[int]:
        params = SamplingParams(temperature=WARM.temperature, seed=seed)
        return generate(chain, PROMPT, max_new_tokens=12, sampling=params).tokens

    runs = {seed: sample(seed) for seed in range(4)}
    assert all(sample(seed) == tokens for seed, tokens in runs.items())
    assert len({tuple(tokens) for tokens in runs.values()}) > 1
    assert any(tokens != generate(chain, PROMPT, max_new_tokens=12).tokens for tokens in runs.values())


def test_tiny_top_p_samples_the_greedy_tokens(tiny_chain: Chain) -> None:
    chain = tiny_chain("whole", "f32")
    greedy = generate(chain, PROMPT, max_new_tokens=15).tokens
    for seed in range(3):
        narrow = SamplingParams(temperature=WARM.temperature, top_p=1e-9, seed=seed)
        assert generate(chain, PROMPT, max_new_tokens=15, sampling=narrow).tokens == greedy


def test_sampler_top_p_keeps_only_the_smallest_set_reaching_the_mass() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    picked = {Sampler(SamplingParams(temperature=1.0, top_p=0.75, seed=s))(logits) for s in range(200)}
    assert picked == {0, 1}
    everything = {Sampler(SamplingParams(temperature=1.0, top_p=1.0, seed=s))(logits) for s in range(400)}
    assert everything == {0, 1, 2, 3}


@pytest.mark.parametrize(("temperature", "top_p"), [(-0.1, 1.0), (10.5, 1.0), (1.0, 0.0), (1.0, 1.01)])
def test_sampling_params_refuse_out_of_range_values(temperature: float, top_p: float) -> None:
    with pytest.raises(ValueError):
        SamplingParams(temperature=temperature, top_p=top_p)


def test_generation_stops_at_a_stop_token_or_the_limit(tiny_chain: Chain) -> None:
    chain = tiny_chain("whole", "f32")
    seen: list[int] = []
    full = generate(chain, PROMPT, max_new_tokens=8, on_token=seen.append)
    assert (len(full.tokens), full.finish_reason, full.decode_steps, seen) == (8, "length", 7, full.tokens)
    stop = full.tokens[3]
    stopped = generate(chain, PROMPT, max_new_tokens=8, stop_ids={stop})
    assert (stopped.tokens, stopped.finish_reason) == (full.tokens[: full.tokens.index(stop)], "stop")
    assert stop not in stopped.tokens
    assert chain.shards[0].sessions == []  # generate closes its session


def test_generate_refuses_an_empty_prompt_or_no_tokens(tiny_chain: Chain) -> None:
    chain = tiny_chain("whole", "f32")
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(chain, [], max_new_tokens=5)
    with pytest.raises(ValueError, match="at least 1"):
        generate(chain, PROMPT, max_new_tokens=0)


@pytest.mark.parametrize(
    ("which", "bad", "message"),
    [
        ("first", np.array([[-1]]), "token ids must be in 0..261"),
        ("first", np.array([[262]]), "token ids must be in 0..261"),
        ("first", np.zeros((1, 0), dtype=np.int64), r"shape \[1, S>=1\]"),
        ("first", np.zeros((1, 2), dtype=np.float32), r"token ids of shape"),
        ("middle", np.zeros((1, 2, 63), dtype=np.float32), r"hidden states of shape \[1, S>=1, 64\]"),
        ("middle", np.full((1, 1, 64), np.nan, dtype=np.float32), "finite"),
        ("middle", np.zeros((1, 2), dtype=np.float32), "hidden states of shape"),
    ],
)
def test_bad_inputs_are_refused_and_leave_the_session_intact(
    tiny_runtimes: Runtimes, which: str, bad: np.ndarray, message: str
) -> None:
    first, middle, _ = tiny_runtimes("0-1,1-3,3-4", "f32")
    runtime = first if which == "first" else middle
    runtime.open("s")
    good = np.array([[5, 6]]) if which == "first" else np.ones((1, 2, 64), dtype=np.float32)
    runtime.step("s", good)
    with pytest.raises(BadInput, match=message):
        runtime.step("s", bad)
    assert runtime.position("s") == 2
