"""Commitments to a shard's per-layer hidden states, and the Merkle proofs that open them one layer at a time.

For every step a provider serves, it commits to what each layer of its shard produced: leaf l is the SHA-256 of
layer l's output at every position of the step (float32 [S, H], C order, little-endian), and the commitment is the
root of a binary Merkle tree over the leaves in layer order. Leaves and inner nodes are hashed with different
prefixes (0x00 and 0x01), so an inner node can never pass for a leaf; a node without a sibling is carried up
unchanged. The browser tab (worker_web/static/worker_web/commitment.js) computes the same bytes.

Later, a referee asks for one layer's states over a range of steps; the provider reveals them with one proof per
step, and `verify` checks each against the commitment it sent while serving the job. No Django here: the agent,
the tab's tests and the referee share it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

LEAF, NODE = b"\x00", b"\x01"
# A proof is a list of (side, sibling): side "L" when the sibling is the left child, "R" when it is the right one.
Proof = list[tuple[str, str]]


def leaf(state: np.ndarray) -> bytes:
    """The leaf of one layer's states for one step: SHA-256 over 0x00 and the float32 bytes."""
    data = np.ascontiguousarray(state, dtype="<f4")
    return hashlib.sha256(LEAF + data.tobytes()).digest()


def leaves(layer_hidden: np.ndarray) -> list[bytes]:
    """One leaf per layer of a step's layer_hidden [n_layers, S, H]."""
    return [leaf(layer_hidden[i]) for i in range(layer_hidden.shape[0])]


def _parent(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE + left + right).digest()


def _levels(nodes: Sequence[bytes]) -> list[list[bytes]]:
    if not nodes:
        raise ValueError("a commitment needs at least one layer")
    levels = [list(nodes)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        above = [_parent(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        if len(below) % 2:
            above.append(below[-1])  # carried up unchanged
        levels.append(above)
    return levels


def root(nodes: Sequence[bytes]) -> bytes:
    return _levels(nodes)[-1][0]


def commit(layer_hidden: np.ndarray) -> str:
    """The commitment (hex) of a step's layer_hidden [n_layers, S, H]."""
    return root(leaves(layer_hidden)).hex()


def proof(nodes: Sequence[bytes], index: int) -> Proof:
    """The siblings from leaf `index` up to the root."""
    path: Proof = []
    for level in _levels(nodes)[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(("L" if sibling < index else "R", level[sibling].hex()))
        index //= 2
    return path


def sides(count: int, index: int) -> list[str]:
    """The sides of the siblings on the path from leaf `index` of a tree of `count` leaves up to the root."""
    out = []
    while count > 1:
        if index ^ 1 < count:
            out.append("L" if index % 2 else "R")
        index //= 2
        count = (count + 1) // 2
    return out


def verify(
    state: np.ndarray, proof_path: object, commitment: str, *, index: int | None = None, count: int | None = None
) -> bool:
    """Whether `state` (one layer, one step) is the leaf that `proof_path` opens under `commitment`; with `index`
    and `count`, also that it is leaf `index` of a tree of `count` leaves (a proof of another layer's leaf opens
    the same root, but not at that place). Anything malformed is simply False: the proof comes from a provider who
    may lie."""
    node = leaf(state)
    if not isinstance(proof_path, list) or len(proof_path) > 64:
        return False
    placed = [item[0] if isinstance(item, list | tuple) and item else None for item in proof_path]
    if index is not None and count is not None and (not 0 <= index < count or placed != sides(count, index)):
        return False
    for item in proof_path:
        if not (isinstance(item, list | tuple) and len(item) == 2 and item[0] in ("L", "R")):
            return False
        try:
            sibling = bytes.fromhex(item[1])
        except (TypeError, ValueError):
            return False
        if len(sibling) != 32:
            return False
        node = _parent(sibling, node) if item[0] == "L" else _parent(node, sibling)
    return node.hex() == commitment
