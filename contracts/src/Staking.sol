// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

/// @title Provider stakes
/// @notice Providers stake the market's token to take work. Unbonding takes `unbondingPeriod`, longer than the
/// challenge window plus the time a dispute may take, and stake that is unbonding can still be slashed: a cheater
/// cannot run from a pending challenge. The verifier (the market's fraud-proof referee) slashes; a share goes to
/// the challenger, the rest to the treasury.
contract Staking is AccessControl, ReentrancyGuard {
    using SafeERC20 for IERC20;

    /// @notice May slash (the market's verification service).
    bytes32 public constant VERIFIER_ROLE = keccak256("VERIFIER_ROLE");
    uint16 public constant MAX_BPS = 10_000;

    struct StakeInfo {
        uint256 active; // can take work, base units
        uint256 unbonding; // requested out, still slashable, base units
        uint64 releaseAt; // when `unbonding` may be withdrawn (unix seconds)
        uint256 slashed; // everything ever slashed from this provider, base units
    }

    IERC20 public immutable token;
    address public treasury;
    uint64 public unbondingPeriod; // seconds
    uint256 public minStake; // base units of active stake needed to take work
    uint16 public challengerShareBps; // of each slash, to the challenger (basis points)

    mapping(address provider => StakeInfo) private _stakes;
    mapping(bytes32 evidenceHash => bool) public evidenceUsed;

    event Staked(address indexed provider, uint256 amount, uint256 active);
    event UnbondRequested(address indexed provider, uint256 amount, uint256 active, uint64 releaseAt);
    event Withdrawn(address indexed provider, uint256 amount);
    event Slashed(
        address indexed provider,
        bytes32 indexed evidenceHash,
        address indexed challenger,
        uint256 amount,
        uint256 toChallenger,
        uint256 toTreasury
    );
    event MinStakeChanged(uint256 minStake);
    event UnbondingPeriodChanged(uint64 unbondingPeriod);
    event ChallengerShareChanged(uint16 challengerShareBps);
    event TreasuryChanged(address treasury);

    error ZeroAmount();
    error ZeroAddress();
    error InsufficientStake(uint256 active, uint256 requested);
    error UnbondingInProgress(uint256 unbonding, uint64 releaseAt);
    error NothingUnbonding();
    error UnbondingNotOver(uint64 releaseAt);
    error SlashExceedsStake(uint256 slashable, uint256 requested);
    error EvidenceAlreadyUsed(bytes32 evidenceHash);
    error ShareTooHigh(uint16 bps);
    error ZeroPeriod();

    /// @param token_ The market's token.
    /// @param admin Holds DEFAULT_ADMIN_ROLE: sets the parameters and grants VERIFIER_ROLE.
    /// @param treasury_ Receives what a slash does not give the challenger.
    /// @param unbondingPeriod_ Seconds between `requestUnbond` and `withdraw`.
    /// @param minStake_ Active stake, in base units, that a provider needs to take work.
    /// @param challengerShareBps_ Share of a slash paid to the challenger, in basis points.
    constructor(
        IERC20 token_,
        address admin,
        address treasury_,
        uint64 unbondingPeriod_,
        uint256 minStake_,
        uint16 challengerShareBps_
    ) {
        if (address(token_) == address(0) || admin == address(0) || treasury_ == address(0)) revert ZeroAddress();
        if (unbondingPeriod_ == 0) revert ZeroPeriod();
        if (challengerShareBps_ > MAX_BPS) revert ShareTooHigh(challengerShareBps_);
        token = token_;
        treasury = treasury_;
        unbondingPeriod = unbondingPeriod_;
        minStake = minStake_;
        challengerShareBps = challengerShareBps_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @notice Stake `amount` base units (approve this contract on the token first).
    function stake(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        StakeInfo storage info = _stakes[msg.sender];
        info.active += amount;
        emit Staked(msg.sender, amount, info.active);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Start unbonding `amount` of your active stake; withdraw it after `unbondingPeriod`. One unbonding at
    /// a time: withdraw the last one first.
    function requestUnbond(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        StakeInfo storage info = _stakes[msg.sender];
        if (info.unbonding != 0) revert UnbondingInProgress(info.unbonding, info.releaseAt);
        if (amount > info.active) revert InsufficientStake(info.active, amount);
        info.active -= amount;
        info.unbonding = amount;
        info.releaseAt = uint64(block.timestamp) + unbondingPeriod;
        emit UnbondRequested(msg.sender, amount, info.active, info.releaseAt);
    }

    /// @notice Withdraw your unbonded stake once its unbonding period is over.
    function withdraw() external nonReentrant {
        StakeInfo storage info = _stakes[msg.sender];
        uint256 amount = info.unbonding;
        if (amount == 0) revert NothingUnbonding();
        if (block.timestamp < info.releaseAt) revert UnbondingNotOver(info.releaseAt);
        info.unbonding = 0;
        info.releaseAt = 0;
        emit Withdrawn(msg.sender, amount);
        token.safeTransfer(msg.sender, amount);
    }

    /// @notice Slash `amount` of `provider`'s stake (active first, then unbonding) for the fraud proven by
    /// `evidenceHash`; `challenger` (or nobody: address zero) gets `challengerShareBps` of it, the treasury the
    /// rest. Each evidence hash slashes once, so a retried slash never takes twice. Verifier only.
    function slash(address provider, uint256 amount, bytes32 evidenceHash, address challenger)
        external
        onlyRole(VERIFIER_ROLE)
        nonReentrant
    {
        if (amount == 0) revert ZeroAmount();
        if (evidenceUsed[evidenceHash]) revert EvidenceAlreadyUsed(evidenceHash);
        StakeInfo storage info = _stakes[provider];
        uint256 slashable = info.active + info.unbonding;
        if (amount > slashable) revert SlashExceedsStake(slashable, amount);
        evidenceUsed[evidenceHash] = true;
        uint256 fromActive = amount < info.active ? amount : info.active;
        info.active -= fromActive;
        info.unbonding -= amount - fromActive;
        if (info.unbonding == 0) info.releaseAt = 0;
        info.slashed += amount;
        uint256 toChallenger = challenger == address(0) ? 0 : (amount * challengerShareBps) / MAX_BPS;
        uint256 toTreasury = amount - toChallenger;
        emit Slashed(provider, evidenceHash, challenger, amount, toChallenger, toTreasury);
        if (toChallenger != 0) token.safeTransfer(challenger, toChallenger);
        if (toTreasury != 0) token.safeTransfer(treasury, toTreasury);
    }

    /// @notice A provider's stake: active, unbonding, when the unbonding may be withdrawn, and all it lost to slashes.
    function stakeOf(address provider)
        external
        view
        returns (uint256 active, uint256 unbonding, uint64 releaseAt, uint256 slashed)
    {
        StakeInfo storage info = _stakes[provider];
        return (info.active, info.unbonding, info.releaseAt, info.slashed);
    }

    /// @notice Whether `provider`'s active stake reaches the market's minimum.
    function canTakeWork(address provider) external view returns (bool) {
        return _stakes[provider].active >= minStake && _stakes[provider].active != 0;
    }

    /// @notice Set the active stake needed to take work. Admin only.
    function setMinStake(uint256 minStake_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        minStake = minStake_;
        emit MinStakeChanged(minStake_);
    }

    /// @notice Set the unbonding period (applies to later requests). Admin only.
    function setUnbondingPeriod(uint64 unbondingPeriod_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (unbondingPeriod_ == 0) revert ZeroPeriod();
        unbondingPeriod = unbondingPeriod_;
        emit UnbondingPeriodChanged(unbondingPeriod_);
    }

    /// @notice Set the challenger's share of a slash, in basis points. Admin only.
    function setChallengerShareBps(uint16 bps) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (bps > MAX_BPS) revert ShareTooHigh(bps);
        challengerShareBps = bps;
        emit ChallengerShareChanged(bps);
    }

    /// @notice Set where the rest of a slash goes. Admin only.
    function setTreasury(address treasury_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (treasury_ == address(0)) revert ZeroAddress();
        treasury = treasury_;
        emit TreasuryChanged(treasury_);
    }
}
