"""The benchmark challenge on the tiny model's real shards: the answer follows from the seed alone, changes with it,
depends on the earliest input (so it cannot be made without the whole run), has the documented shape for a first, a
middle and a head shard, and its wire form is bounded before it is decoded."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from inference import challenge
from inference.runtime import ShardRuntime

FOUND = challenge.Challenge(seed=2**40 + 3, prompt=4, steps=5)


@pytest.mark.parametrize("plan_index", [0, 1, 2], ids=["first", "middle", "head"])
def test_the_answer_is_the_last_steps_output_of_one_session_fed_from_the_seed(
    tiny_runtimes: Callable[..., list[ShardRuntime]], plan_index: int
) -> None:
    runtime = tiny_runtimes("0-1,1-3,3-4", "f32")[plan_index]
    result = challenge.run(runtime, FOUND)
    assert runtime.sessions == []  # its session is closed again
    config = runtime.config
    size = challenge.answer_size(hidden=config.hidden, vocab=config.vocab, has_head=runtime.spec.has_head)
    assert result.answer.dtype == np.float32 and result.answer.shape == (size,)
    assert len(result.step_ns) == FOUND.steps and result.ns_per_layer_token(len(runtime.layers)) >= 1

    # The same run by hand: the prompt, then one position per step, in one session.
    fed = challenge.inputs(FOUND, runtime)
    assert [tensor.shape[1] for tensor in fed] == [4, 1, 1, 1, 1, 1]
    assert fed[0].dtype == (np.int64 if runtime.spec.has_embedding else np.float32)
    runtime.open("by-hand")
    outputs = [runtime.step("by-hand", tensor).output for tensor in fed]
    assert np.array_equal(outputs[-1].reshape(-1), result.answer)
    assert np.array_equal(challenge.run(runtime, FOUND).answer, result.answer)  # the seed decides it all

    # A fresh seed gives another answer; so does changing only the prompt, through attention.
    reseeded = challenge.Challenge(seed=FOUND.seed + 1, prompt=4, steps=5)
    assert not np.allclose(challenge.run(runtime, reseeded).answer, result.answer)
    runtime.open("other-prompt")
    other = fed[0].copy()
    other[0, 0] = (other[0, 0] + 1) % config.vocab if runtime.spec.has_embedding else -other[0, 0]
    last = None
    for tensor in [other, *fed[1:]]:
        last = runtime.step("other-prompt", tensor).output
    assert last is not None and not np.array_equal(last.reshape(-1), result.answer)


def test_an_answer_is_decoded_only_when_it_has_exactly_the_expected_size() -> None:
    values = np.linspace(-3, 3, 10, dtype=np.float32)
    text = challenge.encode_answer(values)
    decoded = challenge.decode_answer(text, 10)
    assert decoded is not None and np.array_equal(decoded, values)
    assert challenge.decode_answer(text, 11) is None
    assert challenge.decode_answer(challenge.encode_answer(values[:9]), 10) is None
    assert challenge.decode_answer(text[:-4] + "!!!!", 10) is None
    assert challenge.decode_answer("A" * 10_000_000, 10) is None  # refused by its length, before any decoding
