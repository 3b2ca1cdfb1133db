"""The demo's chain: Anvil started from node_modules with its state kept under var/demo (so a second run finds its
contracts), the contracts deployed or found, and the demo providers' account staked before it takes work."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User

from ledger import selectors as ledger_selectors
from ledger import services as ledger_services
from ledger.chain import bridge, outbox
from ledger.chain.anvil import AnvilNode
from ledger.chain.client import Chain
from ledger.chain.models import ChainOp, Wallet
from ledger.services import chain as chain_services


def start_chain(work: Path) -> tuple[AnvilNode, Chain]:
    """Anvil on a free port (state in work/chain), the market's settings pointed at it, the contracts in place."""
    node = AnvilNode(state=work / "chain" / "anvil-state.json", state_interval=5, log=work / "logs" / "anvil.log")
    node.start()
    settings.CHAIN_RPC_URL = node.url
    bridge.forget()
    chain = bridge.connect()
    assert chain is not None
    flush_until_done()
    return node, chain


def flush_until_done(timeout: float = 60) -> None:
    """Send the outbox until nothing is queued (another process, the server, may hold its lease for a moment)."""
    until = time.monotonic() + timeout
    while ChainOp.objects.filter(state__in=[ChainOp.State.QUEUED, ChainOp.State.SENT]).exists():
        report = outbox.flush()
        if report.failed:
            failed = ChainOp.objects.filter(pk__in=report.failed).values_list("kind", "last_error")
            raise RuntimeError(f"the chain refused: {list(failed)}")
        if time.monotonic() > until:
            raise TimeoutError(f"chain operations still queued after {timeout:.0f} s: {report.error}")
        if report.waiting is not None or report.error:
            time.sleep(0.2)


def stake(username: str, amount: int) -> Wallet:
    """The user's dev wallet staked to at least `amount`: what is missing is withdrawn from its ledger balance (topped
    up by a grant if short) to the wallet, then staked from there, as a provider would do."""
    user = User.objects.get(username=username)
    chain_services.wallet_dev_create(user=user)
    [wallet] = chain_services.stakes_refresh(addresses=[Wallet.objects.get(user=user).address or ""])
    short = amount - wallet.stake_active
    if short <= 0:
        return wallet
    spendable = ledger_selectors.balances_of(user=user).spendable
    if spendable < short:
        ledger_services.mint_as_system(to_user=user, amount=short - spendable, key=f"demo-stake:{uuid.uuid4()}")
    chain_services.withdrawal_request(user=user, amount=short, to=wallet.address or "")
    flush_until_done()
    return chain_services.stake_dev(user=user, amount=short)
