"""ledger/chain/merkle.py against OpenZeppelin's own StandardMerkleTree (@openzeppelin/merkle-tree from
node_modules): the same settlement-shaped values must give the same leaf hashes, root and proof for every leaf, or a
proof the market hands out would not verify with the library (or the contract) a user checks it with."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ledger.chain.merkle import MerkleTree, leaf_hash, verify

ROOT = Path(__file__).resolve().parents[2]
LEAF_TYPES = ["string", "uint256", "uint256", "uint256", "uint256", "bytes32"]
SIZES = (1, 2, 3, 7, 64)

# Reads {types, trees: [[values, ...], ...]} (uint256 as decimal strings) and prints, per tree, the root, each
# value's leaf hash and its proof, in the order given.
OZ_SCRIPT = """
import fs from "node:fs";
import { StandardMerkleTree } from "@openzeppelin/merkle-tree";

const { types, trees: valueSets } = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const trees = valueSets.map((values) => {
  const tree = StandardMerkleTree.of(values, types);
  return {
    root: tree.root,
    leaves: values.map((v) => tree.leafHash(v)),
    proofs: values.map((_, i) => tree.getProof(i)),
  };
});
process.stdout.write(JSON.stringify(trees));
"""

Values = tuple[str, int, int, int, int, bytes]


def random_settlements(rng: random.Random, count: int) -> list[Values]:
    """Settlement-shaped values with small, huge (up to 2**256 - 1) and zero amounts and non-ASCII job refs."""

    def amount() -> int:
        return rng.choice([0, rng.randrange(10**6), rng.randrange(2**256)])

    return [
        (f"job-{rng.randrange(10**9)}-{rng.choice(['', 'é', '計算'])}", amount(), amount(), amount(), amount(),
         rng.randbytes(32))
        for _ in range(count)
    ]  # fmt: skip


def as_json(values: Values) -> list[Any]:
    job_ref, *amounts, payouts_hash = values
    return [job_ref, *(str(a) for a in amounts), "0x" + payouts_hash.hex()]


def openzeppelin_trees(tmp_path: Path, value_sets: list[list[Values]]) -> list[dict[str, Any]]:
    """Build every tree with @openzeppelin/merkle-tree in one Node run. The script is kept in tmp_path for reading
    when a test fails, but fed on stdin: Node resolves a bare import from the importing file's folder, and only a
    script read from stdin resolves from the cwd (the repository root, whose node_modules holds the library)."""
    script, data = tmp_path / "oz_tree.mjs", tmp_path / "values.json"
    script.write_text(OZ_SCRIPT)
    data.write_text(json.dumps({"types": LEAF_TYPES, "trees": [[as_json(v) for v in vs] for vs in value_sets]}))
    run = subprocess.run(
        ["node", "--input-type=module", "-", str(data)],
        input=script.read_text(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    trees: list[dict[str, Any]] = json.loads(run.stdout)
    return trees


def hexes(hashes: list[bytes]) -> list[str]:
    return ["0x" + h.hex() for h in hashes]


@pytest.fixture(scope="module")
def value_sets() -> list[list[Values]]:
    rng = random.Random(20240917)  # fixed: a failure reproduces
    return [random_settlements(rng, size) for size in SIZES for _ in range(2)]


@pytest.fixture
def theirs(tmp_path: Path, value_sets: list[list[Values]]) -> list[dict[str, Any]]:
    return openzeppelin_trees(tmp_path, value_sets)


def test_root_leaves_and_every_proof_match_openzeppelin(
    value_sets: list[list[Values]], theirs: list[dict[str, Any]]
) -> None:
    for values, oz in zip(value_sets, theirs, strict=True):
        leaves = [leaf_hash(LEAF_TYPES, v) for v in values]
        ours = MerkleTree.of_leaves(leaves)
        size = len(values)
        assert hexes(leaves) == oz["leaves"], f"leaf hashes differ ({size} leaves)"
        assert "0x" + ours.root.hex() == oz["root"], f"roots differ ({size} leaves)"
        for i, leaf in enumerate(leaves):
            assert hexes(ours.proof(leaf)) == oz["proofs"][i], f"proof of leaf {i} of {size} differs"
            assert verify(ours.root, leaf, ours.proof(leaf))


def test_a_proof_fails_against_another_trees_root(value_sets: list[list[Values]]) -> None:
    trees = [MerkleTree.of_leaves([leaf_hash(LEAF_TYPES, v) for v in values]) for values in value_sets]
    for (values, tree), other in zip(zip(value_sets, trees, strict=True), trees[1:] + trees[:1], strict=True):
        for v in values:
            leaf = leaf_hash(LEAF_TYPES, v)
            assert verify(tree.root, leaf, tree.proof(leaf))
            assert not verify(other.root, leaf, tree.proof(leaf))


def test_a_tampered_value_or_proof_fails(value_sets: list[list[Values]]) -> None:
    values = value_sets[-1]  # 64 leaves: proofs six hashes long
    tree = MerkleTree.of_leaves([leaf_hash(LEAF_TYPES, v) for v in values])
    job_ref, escrow, *rest = values[5]
    leaf = leaf_hash(LEAF_TYPES, values[5])
    proof = tree.proof(leaf)
    assert len(proof) == 6
    assert not verify(tree.root, leaf_hash(LEAF_TYPES, (job_ref, escrow + 1, *rest)), proof)
    assert not verify(tree.root, leaf, proof[:-1])
    assert not verify(tree.root, leaf, [proof[0][::-1], *proof[1:]])


def test_an_empty_tree_is_refused() -> None:
    with pytest.raises(ValueError):
        MerkleTree.of_leaves([])
