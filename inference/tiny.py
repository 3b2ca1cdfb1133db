"""A tiny random Llama written as a real GGUF file, so fast tests run through the same code path.

Linear weights are Q4_1, the embedding Q8_0 and norms F32, and q/k rows are permuted the way
llama.cpp's converter stores them, like the real SmolLM2 file (which, unlike this one, ties its head
to the embedding).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize
from tokenizers import pre_tokenizers

from inference.config import LlamaConfig
from inference.gguf_model import permute_rows_like_llama_cpp

TINY_CONFIG = LlamaConfig(
    n_layers=4,
    hidden=64,
    n_heads=4,
    n_kv_heads=2,
    ffn=128,
    vocab=0,
    rope_theta=10000.0,
    rms_eps=1e-5,
    max_context=256,
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_vocab() -> list[str]:
    merged = ["".join(m.split(" ")) for m in MERGES]
    return SPECIALS + sorted(pre_tokenizers.ByteLevel.alphabet()) + merged


def write_tiny_gguf(path: str | os.PathLike[str], *, n_layers: int = 4, seed: int = 0) -> Path:
    """Write a random model with n_layers layers; the same seed always gives the same file."""
    c = TINY_CONFIG
    tokens = tiny_vocab()
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(n_layers)
    writer.add_context_length(c.max_context)
    writer.add_embedding_length(c.hidden)
    writer.add_feed_forward_length(c.ffn)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.rms_eps)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(0)
    writer.add_chat_template(CHAT_TEMPLATE)

    def linear(out_dim: int, in_dim: int) -> np.ndarray:
        weight: np.ndarray = rng.standard_normal((out_dim, in_dim)) / np.sqrt(in_dim)
        return weight.astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(c.hidden)).astype(np.float32)

    def add_q4(name: str, weight: np.ndarray) -> None:
        writer.add_tensor(name, quantize(weight, GGMLQuantizationType.Q4_1), raw_dtype=GGMLQuantizationType.Q4_1)

    embedding = rng.standard_normal((len(tokens), c.hidden)).astype(np.float32)
    writer.add_tensor(
        "token_embd.weight", quantize(embedding, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0
    )
    writer.add_tensor("output_norm.weight", norm())
    # An untied head: with the embedding as head, a random model just repeats its input token, and
    # tests comparing token sequences would compare nothing but that.
    head = rng.standard_normal((len(tokens), c.hidden)).astype(np.float32)
    writer.add_tensor("output.weight", quantize(head, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0)
    kv_dim = c.n_kv_heads * c.head_dim
    for i in range(n_layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm())
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm())
        add_q4(f"blk.{i}.attn_q.weight", permute_rows_like_llama_cpp(linear(c.hidden, c.hidden), c.n_heads))
        add_q4(f"blk.{i}.attn_k.weight", permute_rows_like_llama_cpp(linear(kv_dim, c.hidden), c.n_kv_heads))
        add_q4(f"blk.{i}.attn_v.weight", linear(kv_dim, c.hidden))
        add_q4(f"blk.{i}.attn_output.weight", linear(c.hidden, c.hidden))
        add_q4(f"blk.{i}.ffn_gate.weight", linear(c.ffn, c.hidden))
        add_q4(f"blk.{i}.ffn_up.weight", linear(c.ffn, c.hidden))
        add_q4(f"blk.{i}.ffn_down.weight", linear(c.hidden, c.ffn))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
