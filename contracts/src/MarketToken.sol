// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title The market's token
/// @notice An ERC-20 whose smallest unit is the off-chain ledger's base unit: `decimals()` is 0, so one token on
/// chain is one base unit in the ledger and amounts cross the bridge unchanged.
contract MarketToken is ERC20, AccessControl {
    /// @notice May issue new tokens (the market's vault holds it, so every token it issues backs the ledger).
    bytes32 public constant MINTER_ROLE = keccak256("MINTER_ROLE");

    error ZeroAmount();

    /// @param admin Holds DEFAULT_ADMIN_ROLE and may grant MINTER_ROLE.
    constructor(address admin) ERC20("Compute Market Token", "CMT") {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @notice One token is one base unit.
    function decimals() public pure override returns (uint8) {
        return 0;
    }

    /// @notice Issue `amount` new base units to `to`. Minters only.
    function mint(address to, uint256 amount) external onlyRole(MINTER_ROLE) {
        if (amount == 0) revert ZeroAmount();
        _mint(to, amount);
    }
}
