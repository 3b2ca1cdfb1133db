"""The bridge between the ledger and a real Anvil: backing of mints, withdrawals and deposits exactly once (with the
node stopped and restarted in the middle), stakes mirrored and required for placement, slashes and anchors through
the outbox. No mock of the chain: every test runs its own Anvil from node_modules."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from eth_account import Account as EthAccount

from ledger.chain import bridge, outbox
from ledger.chain.anvil import AnvilNode, rpc
from ledger.chain.client import Chain
from ledger.chain.models import ChainDeposit, ChainOp, Wallet
from ledger.errors import InsufficientFunds
from ledger.models import Account, Transaction
from ledger.services import chain as chain_services
from tests.ledger.conftest import Books, MakeUser

pytestmark = pytest.mark.django_db
State = ChainOp.State


@pytest.fixture
def node(chain_node: AnvilNode) -> AnvilNode:
    return chain_node


def restart(node: AnvilNode) -> None:
    """Stop the node (it writes its state) and start it again on the same port."""
    node.stop()
    node.start()
    bridge.forget()


def chain() -> Chain:
    connected = bridge.connect()
    assert connected is not None
    return connected


def vault_balance() -> int:
    c = chain()
    return int(c.call(c.token.functions.balanceOf(c.vault.address)))


def test_a_ledger_mint_is_backed_by_tokens_issued_into_the_vault(node: AnvilNode, make_user: MakeUser) -> None:
    make_user("alice", funds=5_000)
    make_user("bob", funds=7_000)
    assert ChainOp.objects.filter(kind=ChainOp.Kind.ISSUE, state=State.QUEUED).count() == 2
    report = outbox.flush()
    assert len(report.mined) == 2 and not report.failed
    assert vault_balance() == 12_000
    assert outbox.flush().mined == []  # nothing left: a second flush sends nothing


def test_the_deployment_is_reused_on_a_second_start(node: AnvilNode) -> None:
    first = chain().addresses
    restart(node)
    assert chain().addresses == first


def test_a_withdrawal_debits_the_ledger_and_is_paid_once_across_a_chain_restart(
    node: AnvilNode, make_user: MakeUser, books: Books
) -> None:
    alice = make_user("alice", funds=10_000)
    outbox.flush()
    to = EthAccount.create().address
    op = chain_services.withdrawal_request(user=alice, amount=4_000, to=to, key="w1")
    assert books.balance(alice, Account.Kind.USER_AVAILABLE) == 6_000
    # The same request again (a client's retry) debits and queues nothing more.
    assert chain_services.withdrawal_request(user=alice, amount=4_000, to=to, key="w1").pk == op.pk
    assert books.balance(alice, Account.Kind.USER_AVAILABLE) == 6_000

    # The node stops holding blocks: the op is signed and sent but not mined, then the node restarts.
    rpc(node.url, "evm_setAutomine", False)
    report = outbox.flush(wait=0.2)
    op.refresh_from_db()
    assert op.state == State.SENT and report.waiting == op.pk and op.tx_hash
    node.stop()
    report = outbox.flush(wait=0.2)
    assert report.error and ChainOp.objects.get(pk=op.pk).state == State.SENT  # down: nothing decided
    node.start()
    bridge.forget()
    report = outbox.flush(wait=5)
    op.refresh_from_db()
    assert op.state == State.MINED, op.last_error
    c = chain()
    assert int(c.call(c.token.functions.balanceOf(to))) == 4_000
    # Sending the same signed bytes again cannot pay twice, and neither can the same withdrawal id.
    outbox.flush()
    assert int(c.call(c.token.functions.balanceOf(to))) == 4_000
    paid = c.vault.events.WithdrawalPaid().get_logs(from_block=0)
    assert len(paid) == 1 and paid[0]["args"]["amount"] == 4_000
    assert vault_balance() == 6_000


def test_a_withdrawal_without_the_funds_changes_nothing(node: AnvilNode, make_user: MakeUser, books: Books) -> None:
    alice = make_user("alice", funds=1_000)
    before = books.state()
    with pytest.raises(InsufficientFunds):
        chain_services.withdrawal_request(user=alice, amount=1_001, to=EthAccount.create().address)
    assert books.state() == before
    assert not ChainOp.objects.filter(kind=ChainOp.Kind.WITHDRAW).exists()


def test_a_withdrawal_the_vault_refuses_returns_to_the_user(node: AnvilNode, make_user: MakeUser, books: Books) -> None:
    alice = make_user("alice", funds=3_000)
    outbox.flush()
    c = chain()
    # The operator loses the vault's operator role: the withdrawal is refused on chain.
    c.transact(c.vault.functions.revokeRole(c.vault.functions.OPERATOR_ROLE().call(), c.operator.address))
    op = chain_services.withdrawal_request(user=alice, amount=2_000, to=EthAccount.create().address)
    report = outbox.flush()
    op.refresh_from_db()
    assert op.state == State.FAILED and "AccessControlUnauthorizedAccount" in op.last_error
    assert report.failed == [op.pk]
    assert books.balance(alice, Account.Kind.USER_AVAILABLE) == 3_000
    outbox.flush()
    assert books.balance(alice, Account.Kind.USER_AVAILABLE) == 3_000  # returned once
    returned = Transaction.objects.get(kind=Transaction.Kind.WITHDRAWAL_RETURN)
    assert "AccessControlUnauthorizedAccount" in returned.memo  # the reason travels with the money


def test_a_deposit_is_credited_once_across_a_chain_restart(node: AnvilNode, make_user: MakeUser, books: Books) -> None:
    alice = make_user("alice", funds=9_000)
    outbox.flush()
    chain_services.wallet_dev_create(user=alice)
    wallet = Wallet.objects.get(user=alice)
    chain_services.withdrawal_request(user=alice, amount=5_000, to=wallet.address or "")
    outbox.flush()
    assert books.balance(alice, Account.Kind.USER_AVAILABLE) == 4_000
    chain_services.deposit_dev(user=alice, amount=3_000)
    restart(node)
    assert chain_services.deposits_watch() == 1
    assert books.balance(alice, Account.Kind.USER_AVAILABLE) == 7_000
    assert chain_services.deposits_watch() == 0
    # Even a rescan from block 0 (a lost cursor) credits nothing twice.
    from ledger.chain.models import ChainCursor

    ChainCursor.objects.filter(name__contains="deposits").update(value=0)
    assert chain_services.deposits_watch() == 0
    assert books.balance(alice, Account.Kind.USER_AVAILABLE) == 7_000
    assert ChainDeposit.objects.get().credit is not None
    assert vault_balance() == 9_000 - 5_000 + 3_000


def test_a_deposit_to_an_unknown_reference_is_recorded_not_credited(node: AnvilNode, make_user: MakeUser) -> None:
    alice = make_user("alice", funds=2_000)
    outbox.flush()
    chain_services.wallet_dev_create(user=alice)
    wallet = Wallet.objects.get(user=alice)
    chain_services.withdrawal_request(user=alice, amount=2_000, to=wallet.address or "")
    outbox.flush()
    c = chain()
    key = EthAccount.from_key(wallet.dev_key)
    c.transact(c.token.functions.approve(c.vault.address, 500), key=key)
    c.transact(c.vault.functions.deposit(500, b"\x07" * 32), key=key)
    assert chain_services.deposits_watch() == 0
    record = ChainDeposit.objects.get()
    assert record.credit is None and record.amount == 500


def _staked(user: User, amount: int) -> Wallet:
    chain_services.wallet_dev_create(user=user)
    wallet = Wallet.objects.get(user=user)
    chain_services.withdrawal_request(user=user, amount=amount, to=wallet.address or "")
    outbox.flush()
    return chain_services.stake_dev(user=user, amount=amount)


def test_stakes_are_mirrored_and_slashes_go_through_the_outbox(node: AnvilNode, make_user: MakeUser) -> None:
    provider = make_user("prov", funds=5_000)
    outbox.flush()
    wallet = _staked(provider, 5_000)
    assert wallet.stake_active == 5_000 and wallet.stake_read_at is not None
    challenger = EthAccount.create().address
    op = chain_services.slash_request(
        provider=provider, amount=2_000, evidence_hash="0x" + "ab" * 32, challenger=challenger
    )
    again = chain_services.slash_request(
        provider=provider, amount=2_000, evidence_hash="0x" + "ab" * 32, challenger=challenger
    )
    assert again.pk == op.pk
    outbox.flush()
    op.refresh_from_db()
    assert op.state == State.MINED
    chain_services.stakes_refresh()
    wallet.refresh_from_db()
    assert (wallet.stake_active, wallet.stake_slashed) == (3_000, 2_000)
    c = chain()
    assert int(c.call(c.token.functions.balanceOf(challenger))) == 1_000  # 50 % to the challenger


def test_a_ledger_that_predates_its_chain_is_backed_when_the_contracts_are_deployed(
    node: AnvilNode, make_user: MakeUser, settings: object
) -> None:
    url = node.url
    settings.CHAIN_RPC_URL = ""  # type: ignore[attr-defined]
    make_user("early", funds=3_000)  # minted while the market ran without a chain: nothing queued
    assert not ChainOp.objects.exists()
    settings.CHAIN_RPC_URL = url  # type: ignore[attr-defined]
    bridge.forget()
    outbox.flush()
    assert vault_balance() == 3_000
    from ledger.chain.reconcile import reconcile

    assert reconcile(chain()).ok


def test_an_op_signed_by_two_flushes_at_once_spends_one_nonce(node: AnvilNode, make_user: MakeUser) -> None:
    make_user("alice", funds=1_000)
    make_user("bob", funds=2_000)
    first, second = ChainOp.objects.order_by("pk")
    stale = ChainOp.objects.get(pk=first.pk)  # what a second, overlapping flush read before the first signed it
    outbox._sign(chain(), first)
    outbox._sign(chain(), stale)  # loses: the op is signed already, the nonce cursor stays
    first.refresh_from_db()
    assert first.state == State.SENT
    report = outbox.flush()
    assert report.mined == [first.pk, second.pk] and not report.failed
    assert vault_balance() == 3_000


def test_a_malformed_op_fails_alone_and_does_not_block_the_ops_behind_it(node: AnvilNode, make_user: MakeUser) -> None:
    bad = outbox.enqueue(kind=ChainOp.Kind.ADMIN, key="bad", args={"function": "selfdestruct", "value": "1"})
    make_user("alice", funds=1_000)
    report = outbox.flush()
    bad.refresh_from_db()
    assert bad.state == State.FAILED and "malformed" in bad.last_error
    assert report.failed == [bad.pk] and len(report.mined) == 1
    assert vault_balance() == 1_000


def test_a_flush_that_lost_its_lease_stops_and_another_goes_on(node: AnvilNode, make_user: MakeUser) -> None:
    from ledger.chain.models import ChainCursor

    make_user("alice", funds=1_000)
    holder = outbox._lease()
    assert holder is not None
    assert outbox.flush().error == "another flush holds the lease"  # one flusher at a time
    ChainCursor.objects.filter(name="outbox:lease").update(value=0)  # the holder's lease expired...
    assert outbox._lease() is not None  # ...and a second flusher took it
    assert outbox._renew(holder) is None  # the first one can no longer renew it, so it stops
