"""Commitments to a step's per-layer states (inference/commitment.py): every layer of every tree shape opens with its
proof, and nothing else does: not a state one bit off, not a proof with a sibling, a side or the root changed, not
another layer's proof, not an inner node passed off as a leaf, not a malformed proof from a lying provider."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import pytest

from inference import commitment

LAYER_COUNTS = [1, 2, 3, 5, 7, 30]
SEQ, HIDDEN = 3, 8  # positions of the step, hidden size: small, the tree does not care


def layer_hidden(n_layers: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n_layers, SEQ, HIDDEN)).astype(np.float32)


def flip_bit(state: np.ndarray, index: int = 0, bit: int = 0) -> np.ndarray:
    """A copy of `state` with one bit of one float32 flipped (bit 0: the last of the mantissa)."""
    flipped = np.array(state, dtype=np.float32)
    flipped.reshape(-1).view(np.uint32)[index] ^= np.uint32(1 << bit)
    return flipped


def fold(node: bytes, path: list[tuple[str, str]]) -> str:
    """The root a path leads to from `node` (inner-node hashing, as verify does above the leaf)."""
    for side, sibling in path:
        pair = bytes.fromhex(sibling) + node if side == "L" else node + bytes.fromhex(sibling)
        node = hashlib.sha256(b"\x01" + pair).digest()
    return node.hex()


def flip_hex(text: str) -> str:
    """The same hex string with its first digit changed."""
    return ("1" if text[0] == "0" else "0") + text[1:]


@pytest.mark.parametrize("n_layers", LAYER_COUNTS)
def test_every_layer_opens_under_the_commitment_with_its_own_proof(n_layers: int) -> None:
    states = layer_hidden(n_layers)
    root = commitment.commit(states)
    leaves = commitment.leaves(states)
    assert root == commitment.root(leaves).hex() and len(root) == 64
    for index in range(n_layers):
        path = commitment.proof(leaves, index)
        assert len(path) <= math.ceil(math.log2(n_layers)), "one sibling per level at most"
        assert commitment.verify(states[index], path, root), f"layer {index} of {n_layers}"
        # What a proof looks like after JSON: lists, not tuples.
        assert commitment.verify(states[index], [list(item) for item in path], root)


@pytest.mark.parametrize("n_layers", LAYER_COUNTS)
def test_a_state_one_bit_off_does_not_open(n_layers: int) -> None:
    states = layer_hidden(n_layers)
    root, leaves = commitment.commit(states), commitment.leaves(states)
    for index in range(n_layers):
        path = commitment.proof(leaves, index)
        for element, bit in [(0, 0), (SEQ * HIDDEN - 1, 0), (5, 22), (7, 31)]:  # mantissa, exponent's edge, sign
            assert not commitment.verify(flip_bit(states[index], element, bit), path, root)


def test_negative_zero_is_another_state_than_zero() -> None:
    """The leaf is over the bytes: -0.0 == 0.0 as floats, yet a provider cannot swap one for the other."""
    states = layer_hidden(4)
    states[2, 0, 0] = 0.0
    root, leaves = commitment.commit(states), commitment.leaves(states)
    signed = states[2].copy()
    signed[0, 0] = -0.0
    assert np.array_equal(signed, states[2])
    assert not commitment.verify(signed, commitment.proof(leaves, 2), root)


@pytest.mark.parametrize("n_layers", [n for n in LAYER_COUNTS if n > 1])
def test_a_changed_sibling_or_side_does_not_open(n_layers: int) -> None:
    states = layer_hidden(n_layers)
    root, leaves = commitment.commit(states), commitment.leaves(states)
    for index in range(n_layers):
        path = commitment.proof(leaves, index)
        assert path, "a tree of more than one leaf gives every leaf at least one sibling"
        for level, (side, sibling) in enumerate(path):
            other_sibling = [*path[:level], (side, flip_hex(sibling)), *path[level + 1 :]]
            assert not commitment.verify(states[index], other_sibling, root)
            other_side = [*path[:level], ("R" if side == "L" else "L", sibling), *path[level + 1 :]]
            assert not commitment.verify(states[index], other_side, root)
        assert not commitment.verify(states[index], path[:-1], root), "a level left out"
        assert not commitment.verify(states[index], [*path, path[-1]], root), "a level added"


@pytest.mark.parametrize("n_layers", LAYER_COUNTS)
def test_another_root_does_not_open(n_layers: int) -> None:
    states = layer_hidden(n_layers)
    root, leaves = commitment.commit(states), commitment.leaves(states)
    other = commitment.commit(layer_hidden(n_layers, seed=1))
    for index in range(n_layers):
        path = commitment.proof(leaves, index)
        assert not commitment.verify(states[index], path, flip_hex(root))
        assert not commitment.verify(states[index], path, other)
        assert not commitment.verify(states[index], path, root.upper()), "the commitment is lowercase hex"
        assert not commitment.verify(states[index], path, "")


@pytest.mark.parametrize("n_layers", [n for n in LAYER_COUNTS if n > 1])
def test_a_proof_of_another_layer_does_not_open(n_layers: int) -> None:
    states = layer_hidden(n_layers)
    root, leaves = commitment.commit(states), commitment.leaves(states)
    for index in range(n_layers):
        for other in range(n_layers):
            if other != index:
                assert not commitment.verify(states[index], commitment.proof(leaves, other), root), (index, other)


def test_a_proof_from_another_step_does_not_open() -> None:
    step_one, step_two = layer_hidden(5, seed=1), layer_hidden(5, seed=2)
    root_two = commitment.commit(step_two)
    assert not commitment.verify(step_one[3], commitment.proof(commitment.leaves(step_one), 3), root_two)


def test_leaves_and_inner_nodes_are_hashed_under_different_prefixes() -> None:
    """The format the browser tab reproduces (worker_web/static/worker_web/commitment.js): leaf = SHA-256(0x00 ||
    float32 little-endian bytes), node = SHA-256(0x01 || left || right), an odd node carried up unchanged."""
    states = layer_hidden(3)
    leaves = commitment.leaves(states)
    assert leaves[1] == hashlib.sha256(b"\x00" + states[1].astype("<f4").tobytes()).digest()
    pair = hashlib.sha256(b"\x01" + leaves[0] + leaves[1]).digest()
    assert commitment.commit(states) == hashlib.sha256(b"\x01" + pair + leaves[2]).hexdigest()
    assert commitment.proof(leaves, 2) == [("L", pair.hex())], "the carried leaf needs one sibling, not two"
    assert commitment.commit(states[:1]) == leaves[0].hex(), "one layer: the root is its leaf"
    assert commitment.proof(leaves[:1], 0) == []


@pytest.mark.parametrize("n_layers", [2, 4, 7])
def test_an_inner_node_given_as_a_leaf_does_not_open(n_layers: int) -> None:
    """A provider that sends the two children of a node as "states" (64 bytes, 16 float32s) with the proof of that
    node: without the leaf/node prefixes the hashes would chain up to the root."""
    states = layer_hidden(n_layers)
    root, leaves = commitment.commit(states), commitment.leaves(states)
    forged = np.frombuffer(leaves[0] + leaves[1], dtype="<f4").reshape(1, 16)
    # The proof of the node over leaves 0 and 1 is the proof of leaf 0 without its first sibling.
    node_path = commitment.proof(leaves, 0)[1:]
    node = hashlib.sha256(b"\x01" + leaves[0] + leaves[1]).digest()
    assert fold(node, node_path) == root, "the path is right: only the forged leaf's prefix stops it"
    assert not commitment.verify(forged, node_path, root)
    unprefixed = hashlib.sha256(leaves[0] + leaves[1]).digest()
    assert commitment.leaf(forged) != unprefixed


def test_the_leaf_is_the_float32_little_endian_c_order_bytes_whatever_the_array() -> None:
    state = layer_hidden(1)[0]
    same = [state.astype(">f4"), np.asfortranarray(state), state.astype(np.float64), state.T.copy().T]
    for array in same:
        assert commitment.leaf(array) == commitment.leaf(state)
    assert commitment.leaf(state.T) != commitment.leaf(state), "another layout of positions is another state"


def test_no_layers_is_no_commitment() -> None:
    with pytest.raises(ValueError, match="at least one layer"):
        commitment.commit(np.zeros((0, SEQ, HIDDEN), dtype=np.float32))


@pytest.mark.parametrize(
    "proof",
    [
        None,
        "L" + "0" * 64,
        {"L": "00" * 32},
        (("L", "00" * 32),),  # a tuple, not what JSON gives
        [("X", "00" * 32)],
        [("L",)],
        [("L", "00" * 32, "extra")],
        [("L", "zz" * 32)],
        [("L", "00" * 31)],
        [("L", "00" * 33)],
        [("L", 0)],
        [("L", None)],
        [None],
        [["L", "00" * 32]] * 65,
    ],
)
def test_a_malformed_proof_is_simply_false(proof: Any) -> None:
    states = layer_hidden(2)
    assert commitment.verify(states[0], proof, commitment.commit(states)) is False


def test_more_than_64_levels_are_refused_before_any_hashing() -> None:
    states = layer_hidden(1)
    root = commitment.commit(states)
    assert commitment.verify(states[0], [], root)
    assert not commitment.verify(states[0], [["L", root]] * 65, root)
