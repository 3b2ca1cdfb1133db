"""web3.py against the market's contracts: the artifacts, a connection with the operator's key, deployment, and
signed sends. Framework-free (no Django), so the contract tests, the bench and the services share it.

Every call and send goes through `errors.chain_errors()`; transactions are signed locally (the node never holds a
key) with an explicit nonce, so the caller decides the nonce (the outbox allocates them, see outbox.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.datastructures import SignedTransaction
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.types import TxReceipt

from ledger.chain.errors import ChainReverted, ChainUnavailable, chain_errors, register_abi

ARTIFACTS = Path(__file__).resolve().parents[2] / "contracts" / "artifacts"
CONTRACTS = ("MarketToken", "MarketVault", "Staking", "SettlementAnchor")


@cache
def artifact(name: str) -> dict[str, Any]:
    """contracts/artifacts/<name>.json (ABI and bytecode, built by contracts/build.mjs)."""
    data: dict[str, Any] = json.loads((ARTIFACTS / f"{name}.json").read_text())
    register_abi(data["abi"])
    return data


def role(name: str) -> bytes:
    """An AccessControl role id: keccak256 of its name."""
    return keccak(text=name)


@dataclass(frozen=True)
class Addresses:
    """Where the market's contracts live on one chain."""

    token: str
    vault: str
    staking: str
    anchor: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class StakingParams:
    """Deploy-time settings of the Staking contract (base units, seconds, basis points)."""

    treasury: str
    unbonding_period: int
    min_stake: int
    challenger_share_bps: int


class Chain:
    """A connection to one node, acting as the operator (deployer, minter, verifier, anchorer)."""

    def __init__(self, url: str, operator_key: str, addresses: Addresses | None = None, *, timeout: float = 10) -> None:
        self.url = url
        self.w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}))
        self.operator: LocalAccount = Account.from_key(operator_key)
        self.addresses = addresses
        for name in CONTRACTS:
            artifact(name)

    # --- contracts ------------------------------------------------------------------------------------------------

    def contract(self, name: str, address: str | None = None) -> Contract:
        if address is None:
            if self.addresses is None:
                raise RuntimeError("the contracts are not deployed (no addresses)")
            address = {
                "MarketToken": self.addresses.token,
                "MarketVault": self.addresses.vault,
                "Staking": self.addresses.staking,
                "SettlementAnchor": self.addresses.anchor,
            }[name]
        return self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=artifact(name)["abi"])

    @property
    def token(self) -> Contract:
        return self.contract("MarketToken")

    @property
    def vault(self) -> Contract:
        return self.contract("MarketVault")

    @property
    def staking(self) -> Contract:
        return self.contract("Staking")

    @property
    def anchor(self) -> Contract:
        return self.contract("SettlementAnchor")

    def has_code(self, address: str, name: str) -> bool:
        """Whether `address` holds exactly the runtime code of our artifact `name` (a fresh chain holds none)."""
        with chain_errors():
            code = self.w3.eth.get_code(Web3.to_checksum_address(address))
        deployed = artifact(name)["deployedBytecode"]
        # Immutables (the token address in Staking and the vault) are patched into the runtime code at deploy time,
        # so compare lengths and the metadata tail, which does not contain them.
        return len(code) == (len(deployed) - 2) // 2 and code.hex()[-100:] == deployed[-100:]

    # --- reads and sends ------------------------------------------------------------------------------------------

    def call(self, fn: Any) -> Any:
        """A view function's result (fn = contract.functions.name(args))."""
        with chain_errors():
            return fn.call()

    def chain_id(self) -> int:
        with chain_errors():
            return int(self.w3.eth.chain_id)

    def nonce_of(self, address: str) -> int:
        """The next nonce the node expects from `address`, counting its pending transactions."""
        with chain_errors():
            return int(self.w3.eth.get_transaction_count(Web3.to_checksum_address(address), "pending"))

    def sign(self, fn: Any, *, key: LocalAccount | None = None, nonce: int) -> SignedTransaction:
        """Build and sign a call of `fn` (or a deployment: fn = contract.constructor(...)). Building estimates its
        gas, so a call that would revert raises ChainReverted here, before any nonce is spent."""
        sender = key or self.operator
        with chain_errors():
            tx = fn.build_transaction({"from": sender.address, "nonce": nonce, "chainId": self.chain_id()})
        return sender.sign_transaction(tx)

    def send_raw(self, raw: bytes) -> bytes:
        """Send a signed transaction; its hash. AlreadyKnown / NonceTooLow when the node has seen it or its nonce."""
        with chain_errors():
            return bytes(self.w3.eth.send_raw_transaction(raw))

    def receipt(self, tx_hash: bytes, *, wait: float = 0) -> TxReceipt | None:
        """The mined receipt, or None if not mined (after waiting up to `wait` seconds)."""
        with chain_errors():
            if wait:
                try:
                    return self.w3.eth.wait_for_transaction_receipt(HexBytes(tx_hash), timeout=wait, poll_latency=0.01)
                except Exception as exc:
                    if type(exc).__name__ == "TimeExhausted":
                        return None
                    raise
            try:
                return self.w3.eth.get_transaction_receipt(HexBytes(tx_hash))
            except Exception as exc:
                if type(exc).__name__ == "TransactionNotFound":
                    return None
                raise

    def transact(self, fn: Any, *, key: LocalAccount | None = None, wait: float = 30) -> TxReceipt:
        """Sign with the next nonce, send and wait for the receipt; ChainReverted if it was mined but reverted.
        For a single sender at a time (tests, dev wallets, deployment); the market's own sends go through the
        outbox, which allocates nonces in the database."""
        sender = key or self.operator
        signed = self.sign(fn, key=sender, nonce=self.nonce_of(sender.address))
        tx_hash = self.send_raw(signed.raw_transaction)
        receipt = self.receipt(tx_hash, wait=wait)
        if receipt is None:
            raise ChainUnavailable(f"transaction 0x{tx_hash.hex()} not mined within {wait:.0f} s")
        if receipt["status"] != 1:
            raise ChainReverted(f"transaction {tx_hash.hex()} reverted")
        return receipt

    # --- deployment -----------------------------------------------------------------------------------------------

    def deploy(self, name: str, *args: Any) -> str:
        factory = self.w3.eth.contract(abi=artifact(name)["abi"], bytecode=artifact(name)["bytecode"])
        receipt = self.transact(factory.constructor(*args))
        return str(receipt["contractAddress"])

    def deploy_market(self, params: StakingParams) -> Addresses:
        """Deploy the four contracts and wire their roles: the vault mints the token; the operator runs the vault,
        slashes (verifier) and anchors. The caller records the addresses (idempotence lives in ledger.services)."""
        op = self.operator.address
        token = self.deploy("MarketToken", op)
        vault = self.deploy("MarketVault", token, op)
        staking = self.deploy(
            "Staking",
            token,
            op,
            Web3.to_checksum_address(params.treasury),
            params.unbonding_period,
            params.min_stake,
            params.challenger_share_bps,
        )
        anchor = self.deploy("SettlementAnchor", op)
        self.addresses = Addresses(token=token, vault=vault, staking=staking, anchor=anchor)
        self.transact(self.token.functions.grantRole(role("MINTER_ROLE"), vault))
        self.transact(self.vault.functions.grantRole(role("OPERATOR_ROLE"), op))
        self.transact(self.staking.functions.grantRole(role("VERIFIER_ROLE"), op))
        self.transact(self.anchor.functions.grantRole(role("ANCHOR_ROLE"), op))
        return self.addresses
