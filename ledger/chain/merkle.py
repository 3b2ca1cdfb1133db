"""Merkle trees in the shape of OpenZeppelin's StandardMerkleTree (@openzeppelin/merkle-tree), so that the
contract's `MerkleProof.verify` and that library agree with us on roots and proofs.

A leaf is the ABI encoding of its values hashed twice (keccak256(keccak256(abi.encode(values)))): a leaf can never
be 64 bytes that pass for an inner node. Leaves are sorted by hash; the tree is an array of 2n-1 nodes with the
leaves at the end in reverse order, and an inner node hashes its two children sorted (commutative), which is what
`MerkleProof.processProof` expects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eth_abi import encode
from eth_utils import keccak


def leaf_hash(types: Sequence[str], values: Sequence[object]) -> bytes:
    return keccak(keccak(encode(list(types), list(values))))


def hash_pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b if a < b else b + a)


@dataclass(frozen=True)
class MerkleTree:
    """A built tree: `root`, and `proof(leaf)` for any of its leaves (hashes, as bytes)."""

    nodes: tuple[bytes, ...]

    @classmethod
    def of_leaves(cls, leaves: Sequence[bytes]) -> MerkleTree:
        if not leaves:
            raise ValueError("a Merkle tree needs at least one leaf")
        ordered = sorted(leaves)
        size = 2 * len(ordered) - 1
        nodes: list[bytes] = [b""] * size
        for i, leaf in enumerate(ordered):
            nodes[size - 1 - i] = leaf
        for i in range(size - 1 - len(ordered), -1, -1):
            nodes[i] = hash_pair(nodes[2 * i + 1], nodes[2 * i + 2])
        return cls(tuple(nodes))

    @property
    def root(self) -> bytes:
        return self.nodes[0]

    def proof(self, leaf: bytes) -> list[bytes]:
        """The sibling hashes from `leaf` up to the root."""
        index = self.nodes.index(leaf, len(self.nodes) // 2)
        path = []
        while index > 0:
            path.append(self.nodes[index + 1 if index % 2 == 1 else index - 1])
            index = (index - 1) // 2
        return path


def verify(root: bytes, leaf: bytes, proof: Sequence[bytes]) -> bool:
    """MerkleProof.verify in Python."""
    node = leaf
    for sibling in proof:
        node = hash_pair(node, sibling)
    return node == root
