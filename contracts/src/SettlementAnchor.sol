// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @title Settlement anchors
/// @notice The operator posts, per batch of settled jobs, the Merkle root of their settlements with the batch's count
/// and total. A leaf is hashed twice, as OpenZeppelin's StandardMerkleTree does (never a 64-byte leaf, which could
/// pass for an inner node): keccak256(bytes.concat(keccak256(abi.encode(jobRef, escrow, providers, fee, refund,
/// payoutsHash)))). Anyone can check a job's settlement against its batch with the proof the market returns.
contract SettlementAnchor is AccessControl {
    /// @notice May post anchors (the market's operator).
    bytes32 public constant ANCHOR_ROLE = keccak256("ANCHOR_ROLE");

    struct Batch {
        bytes32 root;
        uint64 count; // settlements in the batch
        uint256 total; // base units the batch's buyers paid (providers plus fees)
        uint64 anchoredAt; // unix seconds
    }

    mapping(uint64 batchId => Batch) private _batches;
    uint64 public batchCount;

    event BatchAnchored(uint64 indexed batchId, bytes32 root, uint64 count, uint256 total);

    error EmptyBatch();
    error ZeroRoot();
    error BatchOutOfOrder(uint64 expected, uint64 given);

    /// @param admin Holds DEFAULT_ADMIN_ROLE and may grant ANCHOR_ROLE.
    constructor(address admin) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @notice Anchor batch `batchId` (batches are numbered 0, 1, 2, ... and each is anchored once).
    function anchor(uint64 batchId, bytes32 root, uint64 count, uint256 total) external onlyRole(ANCHOR_ROLE) {
        if (batchId != batchCount) revert BatchOutOfOrder(batchCount, batchId);
        if (root == bytes32(0)) revert ZeroRoot();
        if (count == 0) revert EmptyBatch();
        _batches[batchId] = Batch(root, count, total, uint64(block.timestamp));
        batchCount = batchId + 1;
        emit BatchAnchored(batchId, root, count, total);
    }

    /// @notice An anchored batch (all zero if `batchId` was never anchored).
    function batch(uint64 batchId) external view returns (bytes32 root, uint64 count, uint256 total, uint64 anchoredAt) {
        Batch storage b = _batches[batchId];
        return (b.root, b.count, b.total, b.anchoredAt);
    }

    /// @notice The leaf of one job's settlement, hashed twice as in StandardMerkleTree.
    function settlementLeaf(
        string calldata jobRef,
        uint256 escrow,
        uint256 providers,
        uint256 fee,
        uint256 refund,
        bytes32 payoutsHash
    ) public pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(jobRef, escrow, providers, fee, refund, payoutsHash))));
    }

    /// @notice Whether `leaf` belongs to anchored batch `batchId`, by its Merkle `proof`.
    function verifyLeaf(uint64 batchId, bytes32[] calldata proof, bytes32 leaf) public view returns (bool) {
        bytes32 root = _batches[batchId].root;
        return root != bytes32(0) && MerkleProof.verifyCalldata(proof, root, leaf);
    }

    /// @notice Whether this settlement of job `jobRef` is in anchored batch `batchId`.
    function verifySettlement(
        uint64 batchId,
        bytes32[] calldata proof,
        string calldata jobRef,
        uint256 escrow,
        uint256 providers,
        uint256 fee,
        uint256 refund,
        bytes32 payoutsHash
    ) external view returns (bool) {
        return verifyLeaf(batchId, proof, settlementLeaf(jobRef, escrow, providers, fee, refund, payoutsHash));
    }
}
