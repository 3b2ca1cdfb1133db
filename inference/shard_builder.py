"""Build an ONNX graph for a contiguous range of Llama decoder layers.

Inputs:  input_ids int64 [1, S] (first shard) or hidden_in float32 [1, S, H];
         positions int64 [S] (absolute positions of the new tokens);
         past_key.<L>, past_value.<L> float32 [1, kv_heads, P, head_dim] for every layer L of the shard.
Outputs: logits float32 [1, vocab] for the newest position (last shard) or hidden_out [1, S, H];
         present_key.<L>, present_value.<L> [1, kv_heads, P + S, head_dim];
         layer_hidden float32 [n_layers, S, H]: each layer's output at every position of the step (for commitments:
         a provider commits to them, and a referee re-executes one layer from them).

Rotary embedding uses the half-split (NeoX) form, because the GGUF reader un-permutes q/k rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import onnx

from inference.config import LlamaConfig, ShardSpec
from inference.gguf_model import Q4_1_BLOCK, GGUFModel, Q4Blocks
from inference.onnx_graph import FLOAT, INT64, GraphBuilder


def build_shard(model: GGUFModel, spec: ShardSpec, *, on_layer: Callable[[int], None] | None = None) -> onnx.ModelProto:
    """The ONNX graph of one shard; `on_layer(layer)` is called after each layer is written (for progress)."""
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
    writer.attention_inputs(positions)
    states = []
    for layer in range(spec.first_layer, spec.end_layer):
        hidden = writer.decoder_layer(layer, hidden)
        if on_layer is not None:
            on_layer(layer)
        states.append(hidden)  # [1, S, H]
    g.rename_output(g.op("Concat", states, axis=0), "layer_hidden")
    g.add_output("layer_hidden", FLOAT, [spec.n_layers, "seq", config.hidden])
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
        self._sums: dict[str, str] = {}

    def attention_inputs(self, positions: str) -> None:
        """What every layer's GroupQueryAttention shares: rotary caches and the total length as int32.

        The kernel takes the cached length as past = total - S, so the new tokens sit at positions
        [past, total): the `positions` input must be contiguous and follow the cache (the runtime ensures it).
        """
        g, c = self.g, self.c
        half = c.head_dim // 2
        inv_freq = 1.0 / (c.rope_theta ** (np.arange(half, dtype=np.float64) * 2 / c.head_dim))
        angles = np.arange(c.max_context, dtype=np.float64)[:, None] * inv_freq[None, :]
        self.cos = g.initializer("rope_cos", np.cos(angles).astype(np.float32))  # [max_context, head_dim / 2]
        self.sin = g.initializer("rope_sin", np.sin(angles).astype(np.float32))
        last = g.op("Gather", [positions, g.const([-1])], axis=0)  # [1]
        self.seqlens_k = g.op("Cast", [last], to=onnx.TensorProto.INT32)  # total length - 1, per batch row
        total = g.op("Add", [last, g.const(1)])
        self.total = g.op("Cast", [g.op("Squeeze", [total, g.const([0])])], to=onnx.TensorProto.INT32)

    def rms_norm(self, x: str, weight: np.ndarray) -> str:
        # Pow-ReduceMean-Add-Sqrt-Div-Mul: the pattern onnxruntime fuses into one normalisation kernel.
        g = self.g
        mean = g.op("ReduceMean", [g.op("Pow", [x, g.const(2.0, np.float32)])], axes=[-1], keepdims=1)
        denom = g.op("Sqrt", [g.op("Add", [mean, g.const(self.c.rms_eps, np.float32)])])
        return g.op("Mul", [g.op("Div", [x, denom]), g.initializer(self.g.fresh("norm"), weight)])

    def linear(self, x: str, layer: int, kinds: tuple[str, ...], *, split: bool = True) -> list[str]:
        """x times several weights that share the input, fused into one matmul (and split again)."""
        name = f"{'+'.join(kinds)}.{layer}"
        blocks = [self.model.linear_q4(layer, kind) for kind in kinds] if self.quant == "q4" else []
        quantized = [b for b in blocks if b is not None]
        if blocks and len(quantized) == len(kinds):
            sizes = [b.codes.shape[0] for b in quantized]
            fused = self._matmul_q4(x, name, Q4Blocks.concat(quantized))
        else:
            weights = [self.model.linear(layer, kind) for kind in kinds]
            sizes = [w.shape[0] for w in weights]
            weight_t = np.concatenate(weights, axis=0).T
            fused = self.g.op("MatMul", [x, self.g.initializer(f"{name}.weight_t", weight_t)])
        if len(kinds) == 1 or not split:
            return [fused]
        return self.g.ops("Split", [fused, self.g.const(sizes)], n_out=len(kinds), axis=-1)

    def _matmul_q4(self, x: str, name: str, blocks: Q4Blocks) -> str:
        """x @ (scale * code + offset)^T, exactly.

        MatMulNBits without zero points computes x @ (scale * (code - 8))^T on its fast path (explicit or
        float zero points are slower or much slower); the rest, 8 * scale + offset per block, comes back
        as (per-block sums of x) @ (8 * scale + offset)^T.
        """
        g = self.g
        out_dim, n_blocks, _ = blocks.codes.shape
        codes = blocks.codes
        packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)  # low nibble first
        scaled = g.op(
            "MatMulNBits",
            [x, g.initializer(f"{name}.q4", packed), g.initializer(f"{name}.scales", blocks.scales)],
            domain="com.microsoft",
            K=n_blocks * Q4_1_BLOCK,
            N=out_dim,
            bits=4,
            block_size=Q4_1_BLOCK,
        )
        shift_t = np.ascontiguousarray((8.0 * blocks.scales + blocks.offsets).T)
        shift = g.op("MatMul", [self._block_sums(x, n_blocks), g.initializer(f"{name}.shift_t", shift_t)])
        return g.op("Add", [scaled, shift])

    def _block_sums(self, x: str, n_blocks: int) -> str:
        """[1, S, n_blocks]: sums of x over each block of 32 inputs, computed once per input tensor."""
        if x not in self._sums:
            g = self.g
            blocked = g.op("Reshape", [x, g.const([0, 0, n_blocks, Q4_1_BLOCK])])
            self._sums[x] = g.op("ReduceSum", [blocked, g.const([-1])], keepdims=0)
        return self._sums[x]

    def lm_head(self, normed: str) -> str:
        g = self.g
        # The head stays float32 in both quantisations: onnxruntime's 8-bit MatMulNBits (which could keep the
        # Q8_0 table exactly) ran many times slower than this Gemm on CPU when it was tried.
        # Gemm with transB reads the (vocab, hidden) table in place: no transposed copy in the file, and a
        # shard holding both ends of a tied model stores the table once.
        if self.model.tied_head and any(i.name == "embedding" for i in g.initializers):
            name = "embedding"
        else:
            name = g.initializer("lm_head", self.model.output_weight())
        return g.op("Gemm", [normed, name], transB=1)

    def decoder_layer(self, layer: int, hidden: str) -> str:
        g, c = self.g, self.c
        normed = self.rms_norm(hidden, self.model.norm(layer, "attn_norm"))
        (qkv,) = self.linear(normed, layer, ("attn_q", "attn_k", "attn_v"), split=False)  # packed for the kernel
        past_k = g.add_input(f"past_key.{layer}", FLOAT, [1, c.n_kv_heads, "past", c.head_dim])
        past_v = g.add_input(f"past_value.{layer}", FLOAT, [1, c.n_kv_heads, "past", c.head_dim])
        attended, keys, values = g.ops(
            "GroupQueryAttention",
            [qkv, "", "", past_k, past_v, self.seqlens_k, self.total, self.cos, self.sin],
            n_out=3,
            domain="com.microsoft",
            num_heads=c.n_heads,
            kv_num_heads=c.n_kv_heads,
            do_rotary=1,
            rotary_interleaved=0,  # half-split rotary, matching the un-permuted q/k rows
        )
        for value, name in ((keys, f"present_key.{layer}"), (values, f"present_value.{layer}")):
            g.rename_output(value, name)
            g.add_output(name, FLOAT, [1, c.n_kv_heads, "total", c.head_dim])
        hidden = g.op("Add", [hidden, self.linear(attended, layer, ("attn_output",))[0]])
        normed = self.rms_norm(hidden, self.model.norm(layer, "ffn_norm"))
        gate, up = self.linear(normed, layer, ("ffn_gate", "ffn_up"))
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])  # SiLU(gate) * up
        return g.op("Add", [hidden, self.linear(act, layer, ("ffn_down",))[0]])
