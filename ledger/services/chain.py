"""Writes that cross between the ledger and the chain: wallets, deposits, withdrawals, stakes, slashes, anchors.

Money moves on the chain only through the outbox (ledger/chain/outbox.py), queued in the same database transaction
as the ledger posting it belongs to. Users' own chain actions (stake, unbond, deposit) are theirs to sign; on the
development chain the market holds a key per user (a dev wallet) and signs them here.

The parts the outbox and the mints need lie below them, in their own modules, and are re-exported here: the stake
mirror (stakes.py: the outbox refreshes a provider's stake once its slash is mined) and the vault's side of the
ledger (vault.py: the mints queue a mint's backing with `issue_backing`, the outbox returns a refused withdrawal with
`withdrawal_return`). This module sits above the outbox: `chain_sync` flushes it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from collections.abc import Callable, Iterator

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from eth_account import Account as EthAccount
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils import is_address, to_checksum_address

from config.errors import Conflict, InvalidInput
from ledger.chain import bridge, outbox
from ledger.chain.client import Chain
from ledger.chain.errors import ChainError, chain_errors
from ledger.chain.models import ChainCursor, ChainDeposit, ChainOp, Wallet
from ledger.chain.ops import enqueue
from ledger.chain.reconcile import staking_settings
from ledger.errors import InsufficientFunds
from ledger.services.posting import (
    MAX_AMOUNT,
    Kind,
    TxKind,
    accounts_for,
    amount_arg,
    lock_accounts,
    post_lines,
    replay,
    user_arg,
)
from ledger.services.stakes import INT64_MAX, no_chain, require_chain
from ledger.services.stakes import stakes_refresh as stakes_refresh
from ledger.services.stakes import stakes_refresh_quietly as stakes_refresh_quietly
from ledger.services.vault import issue_backing as issue_backing
from ledger.services.vault import withdrawal_return as withdrawal_return

log = logging.getLogger(__name__)
LOG_CHUNK_BLOCKS = 2_000


def address_arg(name: str, value: object) -> str:
    if not isinstance(value, str) or not is_address(value):
        raise InvalidInput(f"{name} must be an Ethereum address (0x and 40 hex digits), got {value!r}")
    return to_checksum_address(value)


# --- wallets ------------------------------------------------------------------------------------------------------


def wallet_for(*, user: User) -> Wallet:
    """The user's wallet row (its deposit reference), created on first use without an address."""
    user = user_arg("user", user)
    wallet, _ = Wallet.objects.get_or_create(user=user, defaults={"deposit_ref": "0x" + secrets.token_hex(32)})
    return wallet


def wallet_dev_create(*, user: User) -> Wallet:
    """Give the user a development wallet whose key the market holds (CHAIN_DEV_WALLETS only), with gas money on
    the dev chain. Idempotent: a user with a dev wallet keeps it."""
    if not settings.CHAIN_DEV_WALLETS:
        raise Conflict("dev wallets are off on this market: link your own address", code="dev_wallets_off")
    chain = require_chain()
    wallet = wallet_for(user=user)
    if not wallet.dev_key:
        if wallet.address:
            raise Conflict("this account already linked its own address", code="wallet_linked")
        account = EthAccount.create()
        Wallet.objects.filter(pk=wallet.pk, dev_key="").update(address=account.address, dev_key=account.key.hex())
        wallet.refresh_from_db()
    _dev_gas(chain, wallet.address or "")
    return wallet


def _dev_gas(chain: Chain, address: str) -> None:
    """Top a dev wallet's ether up for gas (Anvil's anvil_setBalance: development chains only)."""
    with chain_errors():
        if chain.w3.eth.get_balance(to_checksum_address(address)) < 10**17:
            chain.w3.provider.make_request("anvil_setBalance", [address, hex(10**18)])  # type: ignore[arg-type]


def link_message(*, user: User, address: str) -> str:
    return f"compute-market: link {to_checksum_address(address)} to account {user.pk}"


def wallet_link(*, user: User, address: str, signature: str) -> Wallet:
    """Link an address the user controls: `signature` is its EIP-191 signature of `link_message`."""
    address = address_arg("address", address)
    try:
        signer = EthAccount.recover_message(
            encode_defunct(text=link_message(user=user, address=address)), signature=signature
        )
    except Exception as exc:  # eth_account raises several kinds for a malformed signature
        raise InvalidInput(f"signature is not a valid signature: {exc}") from exc
    if to_checksum_address(signer) != address:
        raise InvalidInput("the signature was not made by that address")
    wallet = wallet_for(user=user)
    if wallet.dev_key:
        raise Conflict("this account has a dev wallet", code="wallet_linked")
    try:
        with transaction.atomic():  # a savepoint: the unique constraint's failure must not break the caller's block
            Wallet.objects.filter(pk=wallet.pk).update(address=address)
    except IntegrityError as exc:
        raise Conflict("that address is linked to another account", code="wallet_taken") from exc
    wallet.refresh_from_db()
    return wallet


@contextlib.contextmanager
def _dev_signer(user: User) -> Iterator[tuple[Chain, Wallet, LocalAccount]]:
    """The chain, the user's dev wallet and its key, with the wallet's row locked: one dev action per user at a time,
    so two requests never sign with the same nonce (development chains only; they wait on the node meanwhile)."""
    chain = require_chain()
    wallet_for(user=user)
    with transaction.atomic():
        wallet = Wallet.objects.select_for_update().get(user=user)
        if not wallet.dev_key:
            raise Conflict("this account has no dev wallet: sign from your own wallet", code="no_dev_wallet")
        _dev_gas(chain, wallet.address or "")
        yield chain, wallet, EthAccount.from_key(wallet.dev_key)


def token_balance(chain: Chain, address: str) -> int:
    return int(chain.call(chain.token.functions.balanceOf(to_checksum_address(address))))


# --- stakes -------------------------------------------------------------------------------------------------------


def stake_dev(*, user: User, amount: int) -> Wallet:
    """Stake `amount` base units from the user's dev wallet (it must hold them on chain: withdraw to it first)."""
    amount = amount_arg("amount", amount)
    with _dev_signer(user) as (chain, wallet, key):
        held = token_balance(chain, wallet.address or "")
        if held < amount:
            raise InsufficientFunds(
                f"the wallet holds {held} base units on chain; {amount} are needed (withdraw first)"
            )
        chain.transact(chain.token.functions.approve(chain.staking.address, amount), key=key)
        chain.transact(chain.staking.functions.stake(amount), key=key)
    return stakes_refresh(addresses=[wallet.address or ""])[0]


def unbond_dev(*, user: User, amount: int) -> Wallet:
    """Start unbonding `amount` of the dev wallet's active stake."""
    amount = amount_arg("amount", amount)
    with _dev_signer(user) as (chain, wallet, key):
        chain.transact(chain.staking.functions.requestUnbond(amount), key=key)
    return stakes_refresh(addresses=[wallet.address or ""])[0]


def unbonded_withdraw_dev(*, user: User) -> Wallet:
    """Withdraw the dev wallet's unbonded stake to the wallet (after the unbonding period)."""
    with _dev_signer(user) as (chain, wallet, key):
        chain.transact(chain.staking.functions.withdraw(), key=key)
    return stakes_refresh(addresses=[wallet.address or ""])[0]


def slash_request(*, provider: User, amount: int, evidence_hash: str, challenger: str | None = None) -> ChainOp:
    """Queue a slash of `provider`'s stake for the fraud `evidence_hash` (bytes32 hex) proves, with the challenger's
    share to `challenger` (an address, or None: all to the treasury). Once per evidence hash. For the verifier."""
    provider = user_arg("provider", provider)
    amount = amount_arg("amount", amount)
    if not bridge.enabled():
        raise no_chain()
    if not isinstance(evidence_hash, str) or not re.fullmatch(r"0x[0-9a-fA-F]{64}", evidence_hash):
        raise InvalidInput("evidence_hash must be 32 bytes as 0x and 64 hex digits")
    wallet = Wallet.objects.filter(user=provider).exclude(address=None).first()
    if wallet is None:
        raise Conflict(f"provider {provider.pk} has no wallet on chain: nothing to slash", code="no_wallet")
    args = {
        "provider": wallet.address,
        "amount": str(amount),
        "evidence_hash": evidence_hash.lower(),
        "challenger": address_arg("challenger", challenger) if challenger else "",
    }
    with transaction.atomic():
        return enqueue(kind=ChainOp.Kind.SLASH, key=f"slash:{evidence_hash.lower()}", args=args, user=provider)


# --- issuance, deposits, withdrawals ------------------------------------------------------------------------------


def deposit_dev(*, user: User, amount: int) -> str:
    """Deposit `amount` base units from the user's dev wallet into the vault under its deposit reference; the
    watcher credits it once mined. Returns the transaction hash."""
    amount = amount_arg("amount", amount)
    with _dev_signer(user) as (chain, wallet, key):
        held = token_balance(chain, wallet.address or "")
        if held < amount:
            raise InsufficientFunds(f"the wallet holds {held} base units on chain; {amount} are needed")
        ref = bytes.fromhex(wallet.deposit_ref[2:])
        chain.transact(chain.token.functions.approve(chain.vault.address, amount), key=key)
        receipt = chain.transact(chain.vault.functions.deposit(amount, ref), key=key)
    return "0x" + bytes(receipt["transactionHash"]).hex()


def deposits_watch(*, confirmations: int = 0) -> int:
    """Credit the vault's Deposited logs not credited yet, each once (key deposit:<tx hash>:<log index>). The
    cursor (last block scanned) only saves work: a rescan credits nothing twice. Returns how many were credited."""
    chain = require_chain()
    cursor, _ = ChainCursor.objects.get_or_create(name=bridge.cursor_name(chain, f"deposits:{chain.vault.address}"))
    with chain_errors():
        head = int(chain.w3.eth.block_number) - confirmations
    credited = 0
    start = cursor.value + 1 if cursor.value else 0
    while start <= head:
        end = min(start + LOG_CHUNK_BLOCKS - 1, head)
        with chain_errors():
            logs = chain.vault.events.Deposited().get_logs(from_block=start, to_block=end)
        for entry in logs:
            credited += deposit_credit(
                tx_hash="0x" + bytes(entry["transactionHash"]).hex(),
                log_index=int(entry["logIndex"]),
                block_number=int(entry["blockNumber"]),
                sender=str(entry["args"]["from"]),
                deposit_ref="0x" + bytes(entry["args"]["accountRef"]).hex(),
                amount=int(entry["args"]["amount"]),
            )
        ChainCursor.objects.filter(pk=cursor.pk).update(value=end)
        start = end + 1
    return credited


def deposit_credit(
    *, tx_hash: str, log_index: int, block_number: int, sender: str, deposit_ref: str, amount: int
) -> int:
    """Credit one deposit log to the account its reference names, once. 1 if credited now, else 0 (credited
    before, or an unknown reference: recorded for the operator, tokens held in the vault)."""
    with transaction.atomic():
        record, created = ChainDeposit.objects.get_or_create(
            tx_hash=tx_hash,
            log_index=log_index,
            defaults={
                "block_number": block_number,
                "sender": sender,
                "deposit_ref": deposit_ref,
                "amount": min(amount, INT64_MAX),
                "epoch": bridge.epoch(),
            },
        )
        if record.credit_id is not None:
            return 0
        wallet = Wallet.objects.filter(deposit_ref=deposit_ref).select_related("user").first()
        if wallet is None or not 0 < amount <= MAX_AMOUNT:
            if created:
                log.warning(
                    "deposit %s:%s names unknown reference %s (or a bad amount)", tx_hash, log_index, deposit_ref
                )
            return 0
        bridge_account, available = accounts_for((None, Kind.BRIDGE), (wallet.user, Kind.USER_AVAILABLE))
        tx = post_lines(
            kind=TxKind.DEPOSIT,
            key=f"deposit:{tx_hash}:{log_index}",
            lines={bridge_account.pk: -amount, available.pk: amount},
            memo=f"deposit from {sender}",
        )
        ChainDeposit.objects.filter(pk=record.pk).update(user=wallet.user, credit=tx)
    return 1


def withdrawal_request(*, user: User, amount: int, to: str, key: str | None = None) -> ChainOp:
    """Debit `amount` from the user's spendable balance (available, then released earnings) and queue its payment
    from the vault to `to`, in one transaction. Idempotent per `key` (a client's retry pays once). Not enough:
    InsufficientFunds and nothing changes. The chain pays it through the outbox; a refusal returns it."""
    user = user_arg("user", user)
    amount = amount_arg("amount", amount)
    to = address_arg("to", to)
    if not bridge.enabled():  # no node call: a withdrawal queues while the chain is down
        raise no_chain()
    key = f"withdraw:{user.pk}:{key or secrets.token_hex(16)}"
    available, earnings, bridge_account = accounts_for(
        (user, Kind.USER_AVAILABLE), (user, Kind.PROVIDER_AVAILABLE), (None, Kind.BRIDGE)
    )
    intent = {"kind": TxKind.WITHDRAWAL, "user": user.pk, "amount": amount, "to": to}
    with transaction.atomic():
        locked = lock_accounts([available.pk, earnings.pk, bridge_account.pk])
        if replay(key=key, kind=TxKind.WITHDRAWAL, job_ref="", lines={}, intent=intent) is not None:
            return ChainOp.objects.get(key=key)
        from_available = min(locked[available.pk].balance, amount)
        from_earnings = amount - from_available
        if from_earnings > locked[earnings.pk].balance:
            spendable = locked[available.pk].balance + locked[earnings.pk].balance
            raise InsufficientFunds(f"a withdrawal of {amount} base units needs them spendable; you have {spendable}")
        lines = {available.pk: -from_available, earnings.pk: -from_earnings, bridge_account.pk: amount}
        lines = {pk: value for pk, value in lines.items() if value}
        tx = post_lines(kind=TxKind.WITHDRAWAL, key=key, lines=lines, intent=intent, locked=locked, memo=f"to {to}")
        args = {"to": to, "amount": str(amount), "ledger_tx": tx.pk}
        return enqueue(kind=ChainOp.Kind.WITHDRAW, key=key, args=args, user=user)


def staking_params_sync() -> list[ChainOp]:
    """Queue a Staking setter for each deployed parameter that differs from the market's settings (the operator's
    `manage.py chain_params --apply`). Once per (deployment, parameter, change)."""
    chain = require_chain()
    setters = {
        "minStake": "setMinStake",
        "unbondingPeriod": "setUnbondingPeriod",
        "challengerShareBps": "setChallengerShareBps",
        "treasury": "setTreasury",
    }
    ops = []
    with transaction.atomic():
        for name, wanted in staking_settings().items():
            deployed = chain.call(getattr(chain.staking.functions, name)())
            if str(deployed).lower() == str(wanted).lower():
                continue
            key = f"admin:{bridge.epoch()}:{setters[name]}:{deployed}->{wanted}"
            args = {"function": setters[name], "value": str(wanted)}
            ops.append(enqueue(kind=ChainOp.Kind.ADMIN, key=key, args=args))
    return ops


def chain_sync() -> dict[str, object]:
    """One pass of the bridge: send queued ops, credit deposits, refresh stakes. Each part survives the others'
    failure (a chain that is down is reported, not raised)."""
    report: dict[str, object] = {}
    if not bridge.enabled():
        return report
    flushed = outbox.flush()
    report["outbox"] = {"mined": len(flushed.mined), "failed": len(flushed.failed), "error": flushed.error}
    steps: tuple[tuple[str, Callable[[], int]], ...] = (
        ("deposits", deposits_watch),
        ("stakes", lambda: len(stakes_refresh())),
    )
    for name, step in steps:
        try:
            report[name] = step()
        except ChainError as exc:
            report[name] = f"error: {exc}"
            log.warning("chain sync (%s): %s", name, exc)
    return report
