"""The four contracts against a real Anvil: every external function, every revert by its decoded custom error, and
the state, balances and events each success leaves. The chain is shared by the module, so every test works with
fresh accounts and reads balances as differences, never as absolutes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3.logs import DISCARD
from web3.types import TxReceipt

from ledger.chain.anvil import AnvilNode, increase_time
from ledger.chain.client import Chain, role
from ledger.chain.errors import ChainReverted
from ledger.chain.merkle import MerkleTree, leaf_hash
from tests.chain.conftest import CHALLENGER_SHARE_BPS, MIN_STAKE, UNBONDING_PERIOD, fund

ZERO_ADDRESS = "0x" + "00" * 20
ADMIN_ROLE = b"\x00" * 32
MINTER, OPERATOR, VERIFIER, ANCHORER = map(role, ("MINTER_ROLE", "OPERATOR_ROLE", "VERIFIER_ROLE", "ANCHOR_ROLE"))
LEAF_TYPES = ["string", "uint256", "uint256", "uint256", "uint256", "bytes32"]


# --- helpers ------------------------------------------------------------------------------------------------------


def new_account(chain: Chain, tokens: int = 0) -> LocalAccount:
    """A fresh account with gas money and `tokens` base units."""
    account: LocalAccount = Account.create()
    fund(chain, account, tokens=tokens)
    return account


def unique() -> bytes:
    """32 random bytes: an id (withdrawal, issue, evidence, account reference) no other test uses."""
    return os.urandom(32)


def balance(chain: Chain, address: str) -> int:
    return int(chain.call(chain.token.functions.balanceOf(address)))


def stake_of(chain: Chain, account: LocalAccount) -> tuple[int, int, int, int]:
    """(active, unbonding, releaseAt, slashed)."""
    return tuple(chain.call(chain.staking.functions.stakeOf(account.address)))


def events(contract: Any, name: str, receipt: TxReceipt) -> list[dict[str, Any]]:
    """The decoded arguments of `contract`'s `name` events in `receipt` (other contracts' logs skipped)."""
    return [dict(e["args"]) for e in getattr(contract.events, name)().process_receipt(receipt, errors=DISCARD)]


def block_time(chain: Chain, receipt: TxReceipt) -> int:
    return int(chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"])


def norm(value: Any) -> Any:
    """Decoded error arguments give addresses in lower case; compare them case-insensitively."""
    return value.lower() if isinstance(value, str) and value.startswith("0x") else value


@contextmanager
def reverts(name: str, *args: Any) -> Iterator[None]:
    """The block must revert with custom error `name` (and these arguments, when given)."""
    with pytest.raises(ChainReverted) as caught:
        yield
    assert caught.value.error_name == name, str(caught.value)
    if args:
        assert tuple(map(norm, caught.value.error_args)) == tuple(map(norm, args)), str(caught.value)


def stake(chain: Chain, provider: LocalAccount, amount: int) -> TxReceipt:
    chain.transact(chain.token.functions.approve(chain.staking.address, amount), key=provider)
    return chain.transact(chain.staking.functions.stake(amount), key=provider)


def staked_provider(chain: Chain, active: int, unbonding: int = 0) -> LocalAccount:
    provider = new_account(chain, tokens=active + unbonding)
    stake(chain, provider, active + unbonding)
    if unbonding:
        chain.transact(chain.staking.functions.requestUnbond(unbonding), key=provider)
    return provider


@contextmanager
def staking_setting(chain: Chain, setter: str, value: Any, restore: Any) -> Iterator[None]:
    """Change an admin setting of Staking for one test; the module's other tests expect the deploy-time values."""
    chain.transact(getattr(chain.staking.functions, setter)(value))
    try:
        yield
    finally:
        chain.transact(getattr(chain.staking.functions, setter)(restore))


# --- MarketToken --------------------------------------------------------------------------------------------------


def test_token_has_zero_decimals_so_one_token_is_one_base_unit(chain: Chain) -> None:
    assert chain.call(chain.token.functions.decimals()) == 0
    assert chain.call(chain.token.functions.name()) == "Compute Market Token"
    assert chain.call(chain.token.functions.symbol()) == "CMT"


def test_only_the_vault_holds_the_minter_role(chain: Chain, operator: LocalAccount) -> None:
    assert chain.call(chain.token.functions.hasRole(MINTER, chain.vault.address))
    assert chain.call(chain.token.functions.MINTER_ROLE()) == MINTER
    outsider = new_account(chain)
    for account in (operator, outsider):  # the admin may grant the role but does not hold it
        with reverts("AccessControlUnauthorizedAccount", account.address, MINTER):
            chain.transact(chain.token.functions.mint(account.address, 5), key=account)


def test_a_minter_mints_new_supply_and_zero_is_refused(chain: Chain) -> None:
    minter, holder = new_account(chain), new_account(chain)
    chain.transact(chain.token.functions.grantRole(MINTER, minter.address))
    supply = chain.call(chain.token.functions.totalSupply())
    receipt = chain.transact(chain.token.functions.mint(holder.address, 42), key=minter)
    assert events(chain.token, "Transfer", receipt) == [{"from": ZERO_ADDRESS, "to": holder.address, "value": 42}]
    assert balance(chain, holder.address) == 42
    assert chain.call(chain.token.functions.totalSupply()) == supply + 42
    with reverts("ZeroAmount"):
        chain.transact(chain.token.functions.mint(holder.address, 0), key=minter)
    chain.transact(chain.token.functions.revokeRole(MINTER, minter.address))
    with reverts("AccessControlUnauthorizedAccount", minter.address, MINTER):
        chain.transact(chain.token.functions.mint(holder.address, 1), key=minter)


def test_token_transfers_and_allowances_follow_erc20(chain: Chain) -> None:
    alice, bob, carol = new_account(chain, tokens=100), new_account(chain), new_account(chain)
    receipt = chain.transact(chain.token.functions.transfer(bob.address, 30), key=alice)
    assert events(chain.token, "Transfer", receipt) == [{"from": alice.address, "to": bob.address, "value": 30}]
    assert (balance(chain, alice.address), balance(chain, bob.address)) == (70, 30)
    with reverts("ERC20InsufficientBalance", bob.address, 30, 31):
        chain.transact(chain.token.functions.transfer(alice.address, 31), key=bob)
    with reverts("ERC20InvalidReceiver", ZERO_ADDRESS):
        chain.transact(chain.token.functions.transfer(ZERO_ADDRESS, 1), key=alice)
    receipt = chain.transact(chain.token.functions.approve(carol.address, 20), key=alice)
    assert events(chain.token, "Approval", receipt) == [{"owner": alice.address, "spender": carol.address, "value": 20}]
    with reverts("ERC20InsufficientAllowance", carol.address, 20, 21):
        chain.transact(chain.token.functions.transferFrom(alice.address, carol.address, 21), key=carol)
    chain.transact(chain.token.functions.transferFrom(alice.address, carol.address, 15), key=carol)
    assert chain.call(chain.token.functions.allowance(alice.address, carol.address)) == 5
    assert (balance(chain, alice.address), balance(chain, carol.address)) == (55, 15)


@pytest.mark.parametrize("name", ["token", "vault", "staking", "anchor"])
def test_roles_are_granted_and_revoked_by_the_admin_only(chain: Chain, name: str) -> None:
    contract = getattr(chain, name)
    admin, grantee, outsider = chain.operator, new_account(chain), new_account(chain)
    some_role = role("SOME_ROLE")
    assert chain.call(contract.functions.hasRole(ADMIN_ROLE, admin.address))
    assert chain.call(contract.functions.getRoleAdmin(some_role)) == ADMIN_ROLE
    assert chain.call(contract.functions.supportsInterface(bytes.fromhex("7965db0b")))  # IAccessControl
    with reverts("AccessControlUnauthorizedAccount", outsider.address, ADMIN_ROLE):
        chain.transact(contract.functions.grantRole(some_role, outsider.address), key=outsider)
    receipt = chain.transact(contract.functions.grantRole(some_role, grantee.address))
    assert events(contract, "RoleGranted", receipt)[0]["account"] == grantee.address
    with reverts("AccessControlUnauthorizedAccount", outsider.address, ADMIN_ROLE):
        chain.transact(contract.functions.revokeRole(some_role, grantee.address), key=outsider)
    with reverts("AccessControlBadConfirmation"):  # one may renounce only one's own role
        chain.transact(contract.functions.renounceRole(some_role, grantee.address), key=outsider)
    chain.transact(contract.functions.renounceRole(some_role, grantee.address), key=grantee)
    assert not chain.call(contract.functions.hasRole(some_role, grantee.address))
    chain.transact(contract.functions.grantRole(some_role, grantee.address))
    receipt = chain.transact(contract.functions.revokeRole(some_role, grantee.address))
    assert events(contract, "RoleRevoked", receipt)[0]["account"] == grantee.address
    assert not chain.call(contract.functions.hasRole(some_role, grantee.address))


# --- MarketVault --------------------------------------------------------------------------------------------------


def test_vault_refuses_a_zero_token_or_admin_at_deployment(chain: Chain) -> None:
    assert chain.call(chain.vault.functions.token()) == chain.token.address
    for args in ((ZERO_ADDRESS, chain.operator.address), (chain.token.address, ZERO_ADDRESS)):
        with reverts("ZeroAddress"):
            chain.deploy("MarketVault", *args)


def test_deposit_moves_tokens_into_the_vault_under_the_account_ref(chain: Chain) -> None:
    user, ref = new_account(chain, tokens=500), unique()
    vault_before = balance(chain, chain.vault.address)
    with reverts("ERC20InsufficientAllowance", chain.vault.address, 0, 200):  # approve first
        chain.transact(chain.vault.functions.deposit(200, ref), key=user)
    chain.transact(chain.token.functions.approve(chain.vault.address, 200), key=user)
    receipt = chain.transact(chain.vault.functions.deposit(200, ref), key=user)
    assert events(chain.vault, "Deposited", receipt) == [{"from": user.address, "accountRef": ref, "amount": 200}]
    assert balance(chain, user.address) == 300
    assert balance(chain, chain.vault.address) == vault_before + 200


def test_deposit_refuses_a_zero_amount_or_reference(chain: Chain) -> None:
    user = new_account(chain, tokens=10)
    chain.transact(chain.token.functions.approve(chain.vault.address, 10), key=user)
    with reverts("ZeroAmount"):
        chain.transact(chain.vault.functions.deposit(0, unique()), key=user)
    with reverts("ZeroReference"):
        chain.transact(chain.vault.functions.deposit(10, b"\x00" * 32), key=user)
    assert balance(chain, user.address) == 10


def test_withdrawal_pays_once_per_id(chain: Chain) -> None:
    fund(chain, new_account(chain), tokens=100)  # make sure the vault holds something to pay from
    to, withdrawal_id = new_account(chain), unique()
    vault_before = balance(chain, chain.vault.address)
    assert not chain.call(chain.vault.functions.withdrawalPaid(withdrawal_id))
    receipt = chain.transact(chain.vault.functions.withdraw(withdrawal_id, to.address, 60))
    assert events(chain.vault, "WithdrawalPaid", receipt) == [
        {"withdrawalId": withdrawal_id, "to": to.address, "amount": 60}
    ]
    assert balance(chain, to.address) == 60
    assert balance(chain, chain.vault.address) == vault_before - 60
    assert chain.call(chain.vault.functions.withdrawalPaid(withdrawal_id))
    with reverts("WithdrawalAlreadyPaid", withdrawal_id):
        chain.transact(chain.vault.functions.withdraw(withdrawal_id, to.address, 60))
    assert balance(chain, to.address) == 60


def test_withdrawal_refuses_zero_amount_zero_address_and_more_than_the_vault_holds(chain: Chain) -> None:
    to = new_account(chain)
    with reverts("ZeroAmount"):
        chain.transact(chain.vault.functions.withdraw(unique(), to.address, 0))
    with reverts("ZeroAddress"):
        chain.transact(chain.vault.functions.withdraw(unique(), ZERO_ADDRESS, 1))
    held = balance(chain, chain.vault.address)
    withdrawal_id = unique()
    with reverts("ERC20InsufficientBalance", chain.vault.address, held, held + 1):
        chain.transact(chain.vault.functions.withdraw(withdrawal_id, to.address, held + 1))
    assert not chain.call(chain.vault.functions.withdrawalPaid(withdrawal_id))  # the whole call was undone


def test_vault_operations_refuse_a_non_operator(chain: Chain) -> None:
    outsider = new_account(chain)
    assert chain.call(chain.vault.functions.OPERATOR_ROLE()) == OPERATOR
    with reverts("AccessControlUnauthorizedAccount", outsider.address, OPERATOR):
        chain.transact(chain.vault.functions.withdraw(unique(), outsider.address, 1), key=outsider)
    with reverts("AccessControlUnauthorizedAccount", outsider.address, OPERATOR):
        chain.transact(chain.vault.functions.issue(unique(), 1), key=outsider)


def test_issue_mints_into_the_vault_once_per_id(chain: Chain) -> None:
    issue_id = unique()
    vault_before, supply_before = balance(chain, chain.vault.address), chain.call(chain.token.functions.totalSupply())
    receipt = chain.transact(chain.vault.functions.issue(issue_id, 1_000))
    assert events(chain.vault, "Issued", receipt) == [{"issueId": issue_id, "amount": 1_000}]
    assert events(chain.token, "Transfer", receipt) == [
        {"from": ZERO_ADDRESS, "to": chain.vault.address, "value": 1_000}
    ]
    assert balance(chain, chain.vault.address) == vault_before + 1_000
    assert chain.call(chain.token.functions.totalSupply()) == supply_before + 1_000
    assert chain.call(chain.vault.functions.issued(issue_id))
    with reverts("AlreadyIssued", issue_id):
        chain.transact(chain.vault.functions.issue(issue_id, 1_000))
    with reverts("ZeroAmount"):
        chain.transact(chain.vault.functions.issue(unique(), 0))
    assert balance(chain, chain.vault.address) == vault_before + 1_000


def test_issue_fails_whole_when_the_vault_may_not_mint(chain: Chain) -> None:
    issue_id = unique()
    chain.transact(chain.token.functions.revokeRole(MINTER, chain.vault.address))
    try:
        with reverts("AccessControlUnauthorizedAccount", chain.vault.address, MINTER):
            chain.transact(chain.vault.functions.issue(issue_id, 5))
    finally:
        chain.transact(chain.token.functions.grantRole(MINTER, chain.vault.address))
    assert not chain.call(chain.vault.functions.issued(issue_id))  # may be retried once the role is back
    chain.transact(chain.vault.functions.issue(issue_id, 5))


# --- Staking ------------------------------------------------------------------------------------------------------


def test_staking_starts_with_its_deploy_time_parameters(chain: Chain, treasury: LocalAccount) -> None:
    s = chain.staking.functions
    assert chain.call(s.token()) == chain.token.address
    assert chain.call(s.treasury()) == treasury.address
    assert chain.call(s.unbondingPeriod()) == UNBONDING_PERIOD
    assert chain.call(s.minStake()) == MIN_STAKE
    assert chain.call(s.challengerShareBps()) == CHALLENGER_SHARE_BPS
    assert chain.call(s.MAX_BPS()) == 10_000
    assert chain.call(s.VERIFIER_ROLE()) == VERIFIER


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [("token", ZERO_ADDRESS, "ZeroAddress"), ("admin", ZERO_ADDRESS, "ZeroAddress"),
     ("treasury", ZERO_ADDRESS, "ZeroAddress"), ("period", 0, "ZeroPeriod"), ("bps", 10_001, "ShareTooHigh")],
)  # fmt: skip
def test_staking_refuses_bad_parameters_at_deployment(chain: Chain, field: str, value: Any, error: str) -> None:
    op = chain.operator.address
    args = {"token": chain.token.address, "admin": op, "treasury": op, "period": 60, "min": 1, "bps": 100}
    args[field] = value
    with reverts(error):
        chain.deploy("Staking", *args.values())


def test_stake_needs_an_approval_and_adds_to_active_stake(chain: Chain) -> None:
    provider = new_account(chain, tokens=700)
    staking_before = balance(chain, chain.staking.address)
    with reverts("ERC20InsufficientAllowance", chain.staking.address, 0, 300):
        chain.transact(chain.staking.functions.stake(300), key=provider)
    receipt = stake(chain, provider, 300)
    assert events(chain.staking, "Staked", receipt) == [{"provider": provider.address, "amount": 300, "active": 300}]
    receipt = stake(chain, provider, 400)
    assert events(chain.staking, "Staked", receipt) == [{"provider": provider.address, "amount": 400, "active": 700}]
    assert stake_of(chain, provider) == (700, 0, 0, 0)
    assert balance(chain, provider.address) == 0
    assert balance(chain, chain.staking.address) == staking_before + 700
    with reverts("ZeroAmount"):
        chain.transact(chain.staking.functions.stake(0), key=provider)


def test_request_unbond_moves_active_stake_to_unbonding_until_the_period_ends(chain: Chain) -> None:
    provider = staked_provider(chain, 1_000)
    receipt = chain.transact(chain.staking.functions.requestUnbond(400), key=provider)
    release_at = block_time(chain, receipt) + UNBONDING_PERIOD
    assert events(chain.staking, "UnbondRequested", receipt) == [
        {"provider": provider.address, "amount": 400, "active": 600, "releaseAt": release_at}
    ]
    assert stake_of(chain, provider) == (600, 400, release_at, 0)
    with reverts("UnbondingInProgress", 400, release_at):  # one unbonding at a time
        chain.transact(chain.staking.functions.requestUnbond(100), key=provider)


def test_request_unbond_refuses_zero_and_more_than_active(chain: Chain) -> None:
    provider = staked_provider(chain, 500)
    with reverts("ZeroAmount"):
        chain.transact(chain.staking.functions.requestUnbond(0), key=provider)
    with reverts("InsufficientStake", 500, 501):
        chain.transact(chain.staking.functions.requestUnbond(501), key=provider)
    assert stake_of(chain, provider) == (500, 0, 0, 0)


def test_withdraw_pays_unbonded_stake_only_after_the_period(anvil: AnvilNode, chain: Chain) -> None:
    provider = staked_provider(chain, 900, unbonding=300)
    _, _, release_at, _ = stake_of(chain, provider)
    with reverts("UnbondingNotOver", release_at):
        chain.transact(chain.staking.functions.withdraw(), key=provider)
    increase_time(anvil.url, UNBONDING_PERIOD - 60)
    with reverts("UnbondingNotOver", release_at):
        chain.transact(chain.staking.functions.withdraw(), key=provider)
    increase_time(anvil.url, 60)
    staking_before = balance(chain, chain.staking.address)
    receipt = chain.transact(chain.staking.functions.withdraw(), key=provider)
    assert events(chain.staking, "Withdrawn", receipt) == [{"provider": provider.address, "amount": 300}]
    assert balance(chain, provider.address) == 300
    assert balance(chain, chain.staking.address) == staking_before - 300
    assert stake_of(chain, provider) == (900, 0, 0, 0)
    with reverts("NothingUnbonding"):  # paid once
        chain.transact(chain.staking.functions.withdraw(), key=provider)


def test_withdraw_with_nothing_unbonding_is_refused(chain: Chain) -> None:
    provider = staked_provider(chain, 100)
    with reverts("NothingUnbonding"):
        chain.transact(chain.staking.functions.withdraw(), key=provider)


def test_slash_takes_active_stake_first_then_unbonding(chain: Chain, treasury: LocalAccount) -> None:
    provider = staked_provider(chain, 600, unbonding=400)
    _, _, release_at, _ = stake_of(chain, provider)
    chain.transact(chain.staking.functions.slash(provider.address, 700, unique(), ZERO_ADDRESS))
    assert stake_of(chain, provider) == (0, 300, release_at, 700)
    chain.transact(chain.staking.functions.slash(provider.address, 300, unique(), ZERO_ADDRESS))
    assert stake_of(chain, provider) == (0, 0, 0, 1_000)  # nothing left unbonding: no release time either
    with reverts("NothingUnbonding"):
        chain.transact(chain.staking.functions.withdraw(), key=provider)


def test_slash_splits_between_challenger_and_treasury_in_basis_points(chain: Chain, treasury: LocalAccount) -> None:
    provider, challenger, evidence = staked_provider(chain, 2_000), new_account(chain), unique()
    treasury_before, staking_before = balance(chain, treasury.address), balance(chain, chain.staking.address)
    receipt = chain.transact(chain.staking.functions.slash(provider.address, 999, evidence, challenger.address))
    to_challenger = 999 * CHALLENGER_SHARE_BPS // 10_000  # rounded down: the treasury gets the odd unit
    assert events(chain.staking, "Slashed", receipt) == [
        {"provider": provider.address, "evidenceHash": evidence, "challenger": challenger.address, "amount": 999,
         "toChallenger": to_challenger, "toTreasury": 999 - to_challenger}
    ]  # fmt: skip
    assert (to_challenger, balance(chain, challenger.address)) == (499, 499)
    assert balance(chain, treasury.address) == treasury_before + 500
    assert balance(chain, chain.staking.address) == staking_before - 999
    assert stake_of(chain, provider) == (1_001, 0, 0, 999)
    assert chain.call(chain.staking.functions.evidenceUsed(evidence))


@pytest.mark.parametrize(("bps", "to_challenger"), [(0, 0), (10_000, 800), (1_234, 98)])
def test_slash_pays_the_challenger_the_current_share(
    chain: Chain, treasury: LocalAccount, bps: int, to_challenger: int
) -> None:
    provider, challenger = staked_provider(chain, 800), new_account(chain)
    treasury_before = balance(chain, treasury.address)
    with staking_setting(chain, "setChallengerShareBps", bps, CHALLENGER_SHARE_BPS):
        chain.transact(chain.staking.functions.slash(provider.address, 800, unique(), challenger.address))
    assert balance(chain, challenger.address) == to_challenger
    assert balance(chain, treasury.address) == treasury_before + 800 - to_challenger


def test_slash_without_a_challenger_pays_everything_to_the_treasury(chain: Chain, treasury: LocalAccount) -> None:
    provider = staked_provider(chain, 500)
    treasury_before = balance(chain, treasury.address)
    receipt = chain.transact(chain.staking.functions.slash(provider.address, 333, unique(), ZERO_ADDRESS))
    assert events(chain.staking, "Slashed", receipt)[0]["toChallenger"] == 0
    assert balance(chain, treasury.address) == treasury_before + 333
    assert balance(chain, ZERO_ADDRESS) == 0


def test_slash_refuses_more_than_active_plus_unbonding(chain: Chain) -> None:
    provider, evidence = staked_provider(chain, 300, unbonding=200), unique()
    with reverts("SlashExceedsStake", 500, 501):
        chain.transact(chain.staking.functions.slash(provider.address, 501, evidence, ZERO_ADDRESS))
    assert stake_of(chain, provider)[:2] == (300, 200)
    assert not chain.call(chain.staking.functions.evidenceUsed(evidence))  # still usable for a right-sized slash


def test_slash_refuses_reused_evidence_and_zero_amounts(chain: Chain) -> None:
    provider, other, evidence = staked_provider(chain, 300), staked_provider(chain, 300), unique()
    chain.transact(chain.staking.functions.slash(provider.address, 100, evidence, ZERO_ADDRESS))
    with reverts("EvidenceAlreadyUsed", evidence):  # a retried slash never takes twice, whoever it names
        chain.transact(chain.staking.functions.slash(provider.address, 100, evidence, ZERO_ADDRESS))
    with reverts("EvidenceAlreadyUsed", evidence):
        chain.transact(chain.staking.functions.slash(other.address, 100, evidence, ZERO_ADDRESS))
    with reverts("ZeroAmount"):
        chain.transact(chain.staking.functions.slash(provider.address, 0, unique(), ZERO_ADDRESS))
    assert (stake_of(chain, provider)[0], stake_of(chain, other)[0]) == (200, 300)


def test_slash_refuses_a_non_verifier(chain: Chain) -> None:
    provider, outsider = staked_provider(chain, 300), new_account(chain)
    with reverts("AccessControlUnauthorizedAccount", outsider.address, VERIFIER):
        chain.transact(chain.staking.functions.slash(provider.address, 1, unique(), outsider.address), key=outsider)
    assert stake_of(chain, provider) == (300, 0, 0, 0)


def test_can_take_work_needs_active_stake_of_at_least_the_minimum(chain: Chain) -> None:
    def can(account: LocalAccount) -> bool:
        return bool(chain.call(chain.staking.functions.canTakeWork(account.address)))

    below, exact = staked_provider(chain, MIN_STAKE - 1), staked_provider(chain, MIN_STAKE)
    unbonding = staked_provider(chain, MIN_STAKE - 1, unbonding=1)  # unbonding stake does not count
    assert (can(below), can(exact), can(unbonding)) == (False, True, False)
    with staking_setting(chain, "setMinStake", 0, MIN_STAKE):  # even with no minimum, a stake of 0 is no stake
        assert (can(new_account(chain)), can(below)) == (False, True)


def test_admin_setters_change_the_parameters_and_emit_events(chain: Chain, treasury: LocalAccount) -> None:
    s, new_treasury = chain.staking.functions, new_account(chain)
    cases = [
        ("setMinStake", 5, "minStake", "MinStakeChanged", "minStake", MIN_STAKE),
        ("setUnbondingPeriod", 60, "unbondingPeriod", "UnbondingPeriodChanged", "unbondingPeriod", UNBONDING_PERIOD),
        ("setChallengerShareBps", 10_000, "challengerShareBps", "ChallengerShareChanged", "challengerShareBps",
         CHALLENGER_SHARE_BPS),
        ("setTreasury", new_treasury.address, "treasury", "TreasuryChanged", "treasury", treasury.address),
    ]  # fmt: skip
    for setter, value, getter, event, argument, restore in cases:
        receipt = chain.transact(getattr(s, setter)(value))
        assert events(chain.staking, event, receipt) == [{argument: value}]
        assert chain.call(getattr(s, getter)()) == value
        chain.transact(getattr(s, setter)(restore))
        assert chain.call(getattr(s, getter)()) == restore


def test_admin_setters_refuse_bad_values(chain: Chain) -> None:
    s = chain.staking.functions
    with reverts("ZeroPeriod"):
        chain.transact(s.setUnbondingPeriod(0))
    with reverts("ShareTooHigh", 10_001):
        chain.transact(s.setChallengerShareBps(10_001))
    with reverts("ZeroAddress"):
        chain.transact(s.setTreasury(ZERO_ADDRESS))
    assert chain.call(s.unbondingPeriod()) == UNBONDING_PERIOD
    assert chain.call(s.challengerShareBps()) == CHALLENGER_SHARE_BPS


def test_admin_setters_refuse_non_admins(chain: Chain) -> None:
    outsider = new_account(chain)
    s = chain.staking.functions
    calls = [s.setMinStake(1), s.setUnbondingPeriod(1), s.setChallengerShareBps(1), s.setTreasury(outsider.address)]
    for call in calls:
        with reverts("AccessControlUnauthorizedAccount", outsider.address, ADMIN_ROLE):
            chain.transact(call, key=outsider)
    assert chain.call(s.minStake()) == MIN_STAKE


def test_a_new_unbonding_period_applies_to_later_requests(chain: Chain) -> None:
    provider = staked_provider(chain, 100)
    with staking_setting(chain, "setUnbondingPeriod", 60, UNBONDING_PERIOD):
        receipt = chain.transact(chain.staking.functions.requestUnbond(10), key=provider)
    assert stake_of(chain, provider)[2] == block_time(chain, receipt) + 60


def test_a_new_treasury_receives_later_slashes(chain: Chain, treasury: LocalAccount) -> None:
    provider, new_treasury = staked_provider(chain, 100), new_account(chain)
    treasury_before = balance(chain, treasury.address)
    with staking_setting(chain, "setTreasury", new_treasury.address, treasury.address):
        chain.transact(chain.staking.functions.slash(provider.address, 100, unique(), ZERO_ADDRESS))
    assert (balance(chain, new_treasury.address), balance(chain, treasury.address)) == (100, treasury_before)


# --- SettlementAnchor ---------------------------------------------------------------------------------------------


def settlements(count: int) -> list[tuple[str, int, int, int, int, bytes]]:
    """Settlement-shaped leaf values: (jobRef, escrow, providers, fee, refund, payoutsHash)."""
    return [(f"job-{i}", 1_000 + i, 900 - i, 50 + i, 50, unique()) for i in range(count)]


def next_batch(chain: Chain) -> int:
    return int(chain.call(chain.anchor.functions.batchCount()))


def anchor(chain: Chain, values: list[tuple[str, int, int, int, int, bytes]]) -> tuple[int, MerkleTree]:
    tree = MerkleTree.of_leaves([leaf_hash(LEAF_TYPES, v) for v in values])
    batch_id = next_batch(chain)
    chain.transact(chain.anchor.functions.anchor(batch_id, tree.root, len(values), sum(v[2] + v[3] for v in values)))
    return batch_id, tree


def test_batches_are_anchored_in_order_and_read_back(chain: Chain) -> None:
    assert chain.call(chain.anchor.functions.ANCHOR_ROLE()) == ANCHORER
    first, root = next_batch(chain), unique()
    receipt = chain.transact(chain.anchor.functions.anchor(first, root, 3, 12_345))
    assert events(chain.anchor, "BatchAnchored", receipt) == [
        {"batchId": first, "root": root, "count": 3, "total": 12_345}
    ]
    assert chain.call(chain.anchor.functions.batch(first)) == [root, 3, 12_345, block_time(chain, receipt)]
    assert next_batch(chain) == first + 1
    assert chain.call(chain.anchor.functions.batch(first + 1)) == [b"\x00" * 32, 0, 0, 0]  # never anchored


def test_anchor_refuses_a_batch_out_of_order(chain: Chain) -> None:
    expected = next_batch(chain)
    chain.transact(chain.anchor.functions.anchor(expected, unique(), 1, 1))
    with reverts("BatchOutOfOrder", expected + 1, expected):  # anchored once
        chain.transact(chain.anchor.functions.anchor(expected, unique(), 1, 1))
    with reverts("BatchOutOfOrder", expected + 1, expected + 2):  # no gaps
        chain.transact(chain.anchor.functions.anchor(expected + 2, unique(), 1, 1))
    assert next_batch(chain) == expected + 1


def test_anchor_refuses_a_zero_root_an_empty_batch_and_a_non_anchorer(chain: Chain) -> None:
    batch_id, outsider = next_batch(chain), new_account(chain)
    with reverts("ZeroRoot"):
        chain.transact(chain.anchor.functions.anchor(batch_id, b"\x00" * 32, 1, 1))
    with reverts("EmptyBatch"):
        chain.transact(chain.anchor.functions.anchor(batch_id, unique(), 0, 0))
    with reverts("AccessControlUnauthorizedAccount", outsider.address, ANCHORER):
        chain.transact(chain.anchor.functions.anchor(batch_id, unique(), 1, 1), key=outsider)
    assert next_batch(chain) == batch_id


@pytest.mark.parametrize("count", [1, 2, 5])
def test_a_settlement_verifies_against_its_anchored_batch(chain: Chain, count: int) -> None:
    values = settlements(count)
    batch_id, tree = anchor(chain, values)
    a = chain.anchor.functions
    for v in values:
        leaf = leaf_hash(LEAF_TYPES, v)
        assert chain.call(a.settlementLeaf(*v)) == leaf  # the contract hashes a leaf as ledger/chain/merkle.py does
        proof = tree.proof(leaf)
        assert chain.call(a.verifySettlement(batch_id, proof, *v))
        assert chain.call(a.verifyLeaf(batch_id, proof, leaf))


def tamper(value: str | int | bytes) -> str | int | bytes:
    if isinstance(value, str):
        return value + "x"
    return unique() if isinstance(value, bytes) else value + 1


def test_a_tampered_settlement_or_wrong_batch_does_not_verify(chain: Chain) -> None:
    values = settlements(4)
    batch_id, tree = anchor(chain, values)
    other_batch, _ = anchor(chain, settlements(4))
    a = chain.anchor.functions
    v = values[2]
    proof = tree.proof(leaf_hash(LEAF_TYPES, v))
    assert chain.call(a.verifySettlement(batch_id, proof, *v))
    for i in range(len(v)):
        tampered = list(v)
        tampered[i] = tamper(v[i])
        assert not chain.call(a.verifySettlement(batch_id, proof, *tampered)), f"value {i} tampered"
    for wrong in (other_batch, next_batch(chain)):  # another batch's root, a batch never anchored
        assert not chain.call(a.verifySettlement(wrong, proof, *v))
        assert not chain.call(a.verifyLeaf(wrong, proof, leaf_hash(LEAF_TYPES, v)))
    assert not chain.call(a.verifySettlement(batch_id, proof[:-1], *v))  # a truncated proof
    # An unanchored batch's root reads as zero: the zero leaf with an empty proof "reaches" it unless refused.
    assert not chain.call(a.verifyLeaf(next_batch(chain), [], b"\x00" * 32))
