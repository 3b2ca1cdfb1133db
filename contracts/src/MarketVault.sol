// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

import {MarketToken} from "./MarketToken.sol";

/// @title The market's vault
/// @notice Holds the tokens behind the off-chain ledger: every base unit the ledger holds is a token here. A deposit
/// moves tokens in with the ledger account's reference (the market credits it once per log); a withdrawal pays out
/// once per withdrawal id; issuing mints new tokens into the vault once per id, for what the ledger mints.
contract MarketVault is AccessControl, ReentrancyGuard {
    using SafeERC20 for IERC20;

    /// @notice May pay withdrawals and issue backing (the market's operator).
    bytes32 public constant OPERATOR_ROLE = keccak256("OPERATOR_ROLE");

    MarketToken public immutable token;
    mapping(bytes32 withdrawalId => bool) public withdrawalPaid;
    mapping(bytes32 issueId => bool) public issued;

    event Deposited(address indexed from, bytes32 indexed accountRef, uint256 amount);
    event WithdrawalPaid(bytes32 indexed withdrawalId, address indexed to, uint256 amount);
    event Issued(bytes32 indexed issueId, uint256 amount);

    error ZeroAmount();
    error ZeroAddress();
    error ZeroReference();
    error WithdrawalAlreadyPaid(bytes32 withdrawalId);
    error AlreadyIssued(bytes32 issueId);

    /// @param token_ The market's token (grant this vault its MINTER_ROLE to issue).
    /// @param admin Holds DEFAULT_ADMIN_ROLE and may grant OPERATOR_ROLE.
    constructor(MarketToken token_, address admin) {
        if (address(token_) == address(0) || admin == address(0)) revert ZeroAddress();
        token = token_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @notice Deposit `amount` base units into the market account `accountRef` (approve the vault first).
    function deposit(uint256 amount, bytes32 accountRef) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        if (accountRef == bytes32(0)) revert ZeroReference();
        emit Deposited(msg.sender, accountRef, amount);
        IERC20(address(token)).safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Pay withdrawal `withdrawalId` of `amount` base units to `to`, once. Operator only.
    function withdraw(bytes32 withdrawalId, address to, uint256 amount) external onlyRole(OPERATOR_ROLE) nonReentrant {
        if (amount == 0) revert ZeroAmount();
        if (to == address(0)) revert ZeroAddress();
        if (withdrawalPaid[withdrawalId]) revert WithdrawalAlreadyPaid(withdrawalId);
        withdrawalPaid[withdrawalId] = true;
        emit WithdrawalPaid(withdrawalId, to, amount);
        IERC20(address(token)).safeTransfer(to, amount);
    }

    /// @notice Mint `amount` new base units into the vault for what the ledger issued under `issueId`, once.
    /// Operator only.
    function issue(bytes32 issueId, uint256 amount) external onlyRole(OPERATOR_ROLE) {
        if (amount == 0) revert ZeroAmount();
        if (issued[issueId]) revert AlreadyIssued(issueId);
        issued[issueId] = true;
        emit Issued(issueId, amount);
        token.mint(address(this), amount);
    }
}
