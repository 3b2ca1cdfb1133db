"""Build an ONNX graph for a contiguous range of Llama decoder layers.

Inputs:  input_ids int64 [1, S] (first shard) or hidden_in float32 [1, S, H];
         positions int64 [S] (absolute positions of the new tokens);
         past_key.<L>, past_value.<L> float32 [1, kv_heads, P, head_dim] for every layer L of the shard.
Outputs: logits float32 [1, vocab] for the newest position (last shard) or hidden_out [1, S, H];
         present_key.<L>, present_value.<L> [1, kv_heads, P + S, head_dim];
         layer_hidden float32 [n_layers, H]: each layer's output at the newest position (for commitments).

Rotary embedding uses the half-split (NeoX) form, because the GGUF reader un-permutes q/k rows.
"""

from __future__ import annotations

import json

import numpy as np
import onnx

from inference.config import LlamaConfig, ShardSpec
from inference.gguf_model import Q4_1_BLOCK, GGUFModel
from inference.onnx_graph import FLOAT, INT64, GraphBuilder

MASK_VALUE = -1e9  # additive mask for future keys; finite so a fully masked row never yields NaN


def build_shard(model: GGUFModel, spec: ShardSpec) -> onnx.ModelProto:
    config = model.config
    if spec.n_layers_total != config.n_layers:
        raise ValueError(f"spec says {spec.n_layers_total} layers, the model has {config.n_layers}")
    g = GraphBuilder(spec.shard_id)
    writer = _LayerWriter(g, model, config, quant=spec.quant)
    positions = g.add_input("positions", INT64, ["seq"])
    if spec.has_embedding:
        ids = g.add_input("input_ids", INT64, [1, "seq"])
        hidden = g.op("Gather", [g.initializer("embedding", model.embedding()), ids], axis=0)
    else:
        hidden = g.add_input("hidden_in", FLOAT, [1, "seq", config.hidden])
    cos, sin = writer.rotary_tables(positions)
    mask = None
    newest = []
    for layer in range(spec.first_layer, spec.end_layer):
        hidden, mask = writer.decoder_layer(layer, hidden, cos, sin, positions, mask)
        newest.append(g.op("Gather", [hidden, g.const(-1)], axis=1))  # [1, H]
    g.rename_output(g.op("Concat", newest, axis=0), "layer_hidden")
    g.add_output("layer_hidden", FLOAT, [spec.n_layers, config.hidden])
    if spec.has_head:
        last = g.op("Gather", [hidden, g.const(-1)], axis=1)
        normed = writer.rms_norm(last, model.norm(None, "output_norm"))
        g.rename_output(writer.lm_head(normed), "logits")
        g.add_output("logits", FLOAT, [1, config.vocab])
    else:
        g.rename_output(hidden, "hidden_out")
        g.add_output("hidden_out", FLOAT, [1, "seq", config.hidden])
    meta = {"shard_id": spec.shard_id, "config": json.dumps(config.to_dict()), "spec": json.dumps(vars(spec))}
    return g.model(metadata=meta)


class _LayerWriter:
    """Writes the ops of one decoder layer at a time into a GraphBuilder."""

    def __init__(self, g: GraphBuilder, model: GGUFModel, config: LlamaConfig, *, quant: str) -> None:
        self.g, self.model, self.c, self.quant = g, model, config, quant

    def rotary_tables(self, positions: str) -> tuple[str, str]:
        half = self.c.head_dim // 2
        inv_freq = 1.0 / (self.c.rope_theta ** (np.arange(half, dtype=np.float64) * 2 / self.c.head_dim))
        angles = np.arange(self.c.max_context, dtype=np.float64)[:, None] * inv_freq[None, :]
        table_cos = np.concatenate([np.cos(angles)] * 2, axis=1).astype(np.float32)
        table_sin = np.concatenate([np.sin(angles)] * 2, axis=1).astype(np.float32)
        g = self.g
        cos = g.op("Gather", [g.initializer("rope_cos", table_cos), positions], axis=0)  # [S, head_dim]
        sin = g.op("Gather", [g.initializer("rope_sin", table_sin), positions], axis=0)
        return cos, sin

    def rms_norm(self, x: str, weight: np.ndarray) -> str:
        # Pow-ReduceMean-Add-Sqrt-Div-Mul: the pattern onnxruntime fuses into one normalisation kernel.
        g = self.g
        mean = g.op("ReduceMean", [g.op("Pow", [x, g.const(2.0, np.float32)])], axes=[-1], keepdims=1)
        denom = g.op("Sqrt", [g.op("Add", [mean, g.const(self.c.rms_eps, np.float32)])])
        return g.op("Mul", [g.op("Div", [x, denom]), g.initializer(self.g.fresh("norm"), weight)])

    def linear(self, x: str, layer: int, kind: str) -> str:
        blocks = self.model.linear_q4(layer, kind) if self.quant == "q4" else None
        if blocks is None:
            weight_t = self.model.linear(layer, kind).T
            return self.g.op("MatMul", [x, self.g.initializer(f"{kind}.{layer}.weight_t", weight_t)])
        return self._linear_q4(x, f"{kind}.{layer}", blocks.codes, blocks.scales, blocks.offsets)

    def _linear_q4(self, x: str, name: str, codes: np.ndarray, scales: np.ndarray, offsets: np.ndarray) -> str:
        """x @ (scale * code + offset)^T, exactly: MatMulNBits with zero points 0 does the scaled codes,
        and the per-block offsets come back as (per-block sums of x) @ offsets^T."""
        g = self.g
        out_dim, n_blocks, _ = codes.shape
        packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)  # low nibble first
        zero_points = np.zeros(out_dim * ((n_blocks + 1) // 2), dtype=np.uint8)
        scaled = g.op(
            "MatMulNBits",
            [
                x,
                g.initializer(f"{name}.q4", packed),
                g.initializer(f"{name}.scales", scales.reshape(-1)),
                g.initializer(f"{name}.zero_points", zero_points),
            ],
            domain="com.microsoft",
            K=n_blocks * Q4_1_BLOCK,
            N=out_dim,
            bits=4,
            block_size=Q4_1_BLOCK,
        )
        block_sums = g.op(
            "ReduceSum",
            [g.op("Reshape", [x, g.const([0, 0, n_blocks, Q4_1_BLOCK])]), g.const([-1])],
            keepdims=0,
        )
        shift = g.op("MatMul", [block_sums, g.initializer(f"{name}.offsets_t", np.ascontiguousarray(offsets.T))])
        return g.op("Add", [scaled, shift])

    def lm_head(self, normed: str) -> str:
        # Gemm with transB reads the (vocab, hidden) table in place: no transposed copy in the file.
        weight = self.model.output_weight()
        name = "embedding" if any(i.name == "embedding" for i in self.g.initializers) else "lm_head"
        if name == "lm_head":
            self.g.initializer(name, weight)
        return self.g.op("Gemm", [normed, name], transB=1)

    def decoder_layer(
        self, layer: int, hidden: str, cos: str, sin: str, positions: str, mask: str | None
    ) -> tuple[str, str]:
        g, c = self.g, self.c
        normed = self.rms_norm(hidden, self.model.norm(layer, "attn_norm"))
        q = self._heads(self.linear(normed, layer, "attn_q"), c.n_heads)
        k = self._heads(self.linear(normed, layer, "attn_k"), c.n_kv_heads)
        v = self._heads(self.linear(normed, layer, "attn_v"), c.n_kv_heads)
        q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        past_k = g.add_input(f"past_key.{layer}", FLOAT, [1, c.n_kv_heads, "past", c.head_dim])
        past_v = g.add_input(f"past_value.{layer}", FLOAT, [1, c.n_kv_heads, "past", c.head_dim])
        keys = g.rename_output(g.op("Concat", [past_k, k], axis=2), f"present_key.{layer}")
        values = g.rename_output(g.op("Concat", [past_v, v], axis=2), f"present_value.{layer}")
        for name in (keys, values):
            g.add_output(name, FLOAT, [1, c.n_kv_heads, "total", c.head_dim])
        if mask is None:
            mask = self._causal_mask(keys, positions)
        attended = self._attention(q, keys, values, mask)
        hidden = g.op("Add", [hidden, self.linear(attended, layer, "attn_output")])
        normed = self.rms_norm(hidden, self.model.norm(layer, "ffn_norm"))
        gate = self.linear(normed, layer, "ffn_gate")
        up = self.linear(normed, layer, "ffn_up")
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])  # SiLU(gate) * up
        return g.op("Add", [hidden, self.linear(act, layer, "ffn_down")]), mask

    def _heads(self, x: str, heads: int) -> str:
        """[1, S, heads * D] -> [1, heads, S, D]"""
        g = self.g
        return g.op("Transpose", [g.op("Reshape", [x, g.const([0, 0, heads, self.c.head_dim])])], perm=[0, 2, 1, 3])

    def _rotate(self, x: str, cos: str, sin: str) -> str:
        g = self.g
        half = self.c.head_dim // 2
        x1, x2 = g.op("Split", [x, g.const([half, half])], n_out=2, axis=-1)
        rotated = g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)
        return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rotated, sin])])

    def _causal_mask(self, keys: str, positions: str) -> str:
        """[S, T] additive mask: a query at absolute position p sees keys at positions 0..p."""
        g = self.g
        total = g.op("Gather", [g.op("Shape", [keys]), g.const(2)], axis=0)
        key_pos = g.op("Range", [g.const(0), total, g.const(1)])
        future = g.op(
            "Greater", [g.op("Unsqueeze", [key_pos, g.const([0])]), g.op("Unsqueeze", [positions, g.const([1])])]
        )
        return g.op("Where", [future, g.const(MASK_VALUE, np.float32), g.const(0.0, np.float32)])

    def _attention(self, q: str, keys: str, values: str, mask: str) -> str:
        """Grouped-query attention: query head h reads KV head h // (heads / kv_heads)."""
        g, c = self.g, self.c
        group = c.n_heads // c.n_kv_heads
        q5 = g.op("Reshape", [q, g.const([1, c.n_kv_heads, group, -1, c.head_dim])])
        k5 = g.op("Transpose", [g.op("Unsqueeze", [keys, g.const([2])])], perm=[0, 1, 2, 4, 3])
        v5 = g.op("Unsqueeze", [values, g.const([2])])
        scores = g.op("Mul", [g.op("MatMul", [q5, k5]), g.const(1.0 / np.sqrt(c.head_dim), np.float32)])
        probs = g.op("Softmax", [g.op("Add", [scores, mask])], axis=-1)
        context = g.op("Reshape", [g.op("MatMul", [probs, v5]), g.const([1, c.n_heads, -1, c.head_dim])])
        merged = g.op("Transpose", [context], perm=[0, 2, 1, 3])
        return g.op("Reshape", [merged, g.const([0, 0, c.hidden])])
