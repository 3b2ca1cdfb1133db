"""A real Anvil node for the chain tests (started from node_modules by ledger.chain.anvil), and the market's
contracts deployed on it with Anvil's public development keys."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.chain.anvil import DEV_KEYS, AnvilNode
from ledger.chain.client import Chain, StakingParams

UNBONDING_PERIOD = 3 * 24 * 3600  # seconds
MIN_STAKE = 1_000  # base units
CHALLENGER_SHARE_BPS = 5_000


@pytest.fixture(scope="module")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnvilNode]:
    """One Anvil per test module (a fresh chain; tests in a module share it and must not assume balances)."""
    logs = tmp_path_factory.mktemp("anvil")
    with AnvilNode(log=logs / "anvil.log") as node:
        yield node


@pytest.fixture(scope="module")
def operator() -> LocalAccount:
    account: LocalAccount = Account.from_key(DEV_KEYS[0])
    return account


@pytest.fixture(scope="module")
def treasury() -> LocalAccount:
    account: LocalAccount = Account.from_key(DEV_KEYS[4])
    return account


@pytest.fixture(scope="module")
def chain(anvil: AnvilNode, treasury: LocalAccount) -> Chain:
    """The four contracts freshly deployed on the module's Anvil, the operator holding every role."""
    chain = Chain(anvil.url, DEV_KEYS[0])
    chain.deploy_market(
        StakingParams(
            treasury=treasury.address,
            unbonding_period=UNBONDING_PERIOD,
            min_stake=MIN_STAKE,
            challenger_share_bps=CHALLENGER_SHARE_BPS,
        )
    )
    return chain


@pytest.fixture
def fresh_account() -> LocalAccount:
    """A new random account with no ETH and no tokens (fund it with `fund`)."""
    account: LocalAccount = Account.create()
    return account


def fund(chain: Chain, to: LocalAccount, *, tokens: int = 0, eth_wei: int = 10**18) -> None:
    """Give `to` gas money (anvil_setBalance) and `tokens` base units (issued into the vault, then paid out)."""
    chain.w3.provider.make_request("anvil_setBalance", [to.address, hex(eth_wei)])  # type: ignore[arg-type]
    if tokens:
        issue_id = Account.create().key  # any unique 32 bytes
        chain.transact(chain.vault.functions.issue(bytes(issue_id), tokens))
        chain.transact(chain.vault.functions.withdraw(bytes(Account.create().key), to.address, tokens))
