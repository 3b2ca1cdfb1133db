"""Settlement anchors, the ledger/chain reconciliation and stake-gated placement, on a real Anvil."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from ledger import services
from ledger.chain import bridge, outbox
from ledger.chain.anvil import AnvilNode
from ledger.chain.models import ChainOp, SettlementLeaf, Wallet
from ledger.chain.reconcile import anchor_problems, reconcile
from ledger.chain.selectors import settlement_proof
from ledger.models import Transaction
from ledger.services import anchoring
from ledger.services import chain as chain_services
from market import selectors as market_selectors
from market.models import Provider
from tests.ledger.conftest import MakeUser

pytestmark = pytest.mark.django_db


def settle(buyer: User, providers: list[User], ref: str, *, pay: int = 300) -> Transaction:
    services.escrow_for_job(user=buyer, amount=1_000, job_ref=ref)
    return services.settle_job(job_ref=ref, buyer=buyer, payouts=[(p, pay) for p in providers], fee=30)


def test_a_settled_job_is_anchored_and_its_proof_checks_on_chain(chain_node: AnvilNode, make_user: MakeUser) -> None:
    buyer, p1, p2 = make_user("buyer", funds=50_000), make_user("p1"), make_user("p2")
    for i in range(5):
        settle(buyer, [p1, p2], f"job-{i}")
    batch = anchoring.anchor_pending()
    assert batch is not None and batch.count == 5 and batch.total == 5 * (600 + 30)
    assert anchoring.anchor_pending() is None  # each settlement enters one batch
    outbox.flush()
    proof = settlement_proof(job_ref="job-3")
    assert proof is not None and proof["anchor_state"] == ChainOp.State.MINED and proof["anchor_tx"]
    assert proof["values"][1:5] == [1_000, 600, 30, 370]
    chain = bridge.connect()
    assert chain is not None
    job_ref, escrow, paid, fee, refund, payouts = proof["values"]
    as_bytes = [bytes.fromhex(p[2:]) for p in proof["proof"]]
    check = chain.anchor.functions.verifySettlement
    args = (proof["batch_id"], as_bytes, job_ref, escrow, paid, fee, refund, bytes.fromhex(payouts[2:]))
    assert chain.call(check(*args)) is True
    # A settlement that claims a different refund, or another batch, does not check.
    assert chain.call(check(*args[:6], refund + 1, args[7])) is False
    assert chain.call(check(proof["batch_id"] + 1, *args[1:])) is False
    # The ledger recomputes to what is on chain.
    assert anchor_problems(chain) == (1, [])
    call_command("verify_anchors")


def test_batches_are_numbered_in_order_and_anchored_while_the_chain_was_down(
    chain_node: AnvilNode, make_user: MakeUser
) -> None:
    buyer, p1 = make_user("buyer", funds=50_000), make_user("p1")
    outbox.flush()
    settle(buyer, [p1], "a")
    anchoring.anchor_pending()
    chain_node.stop()
    settle(buyer, [p1], "b")
    second = anchoring.anchor_pending()  # anchoring is queued, not sent: the market keeps trading
    assert second is not None and second.batch_id == 1
    assert outbox.flush().error
    chain_node.start()
    bridge.forget()
    outbox.flush()
    assert set(ChainOp.objects.filter(kind=ChainOp.Kind.ANCHOR).values_list("state", flat=True)) == {"mined"}
    chain = bridge.connect()
    assert chain is not None and chain.call(chain.anchor.functions.batchCount()) == 2


def test_verify_anchors_catches_a_ledger_that_no_longer_gives_the_root(
    chain_node: AnvilNode, make_user: MakeUser
) -> None:
    buyer, p1 = make_user("buyer", funds=50_000), make_user("p1")
    settle(buyer, [p1], "x")
    anchoring.anchor_pending()
    outbox.flush()
    # Someone edits a recorded leaf (the ledger's own rows are append-only; the batch record is not).
    SettlementLeaf.objects.filter(job_ref="x").update(values=["x", 1_000, 1, 30, 969, "0x" + "00" * 32])
    with pytest.raises(CommandError, match="changed"):
        call_command("verify_anchors")


def test_ledger_and_chain_agree_and_a_vault_drain_is_caught(chain_node: AnvilNode, make_user: MakeUser) -> None:
    alice = make_user("alice", funds=20_000)
    chain_services.wallet_dev_create(user=alice)
    chain_services.withdrawal_request(user=alice, amount=5_000, to=Wallet.objects.get(user=alice).address or "")
    outbox.flush()
    chain_services.deposit_dev(user=alice, amount=2_000)
    chain_services.deposits_watch()
    chain = bridge.connect()
    assert chain is not None
    r = reconcile(chain)
    assert r.ok, r.problems
    assert r.vault_balance == 20_000 - 5_000 + 2_000 == r.ledger_held
    call_command("ledger_check")
    # Tokens leave the vault without the ledger knowing (a withdrawal sent around the outbox).
    chain.transact(chain.vault.functions.withdraw(b"\x09" * 32, chain.operator.address, 1))
    assert not reconcile(chain).ok
    with pytest.raises(CommandError, match="disagree"):
        call_command("ledger_check")


def test_only_providers_with_a_fresh_stake_at_the_minimum_are_placed(
    chain_node: AnvilNode, make_user: MakeUser, settings: object
) -> None:
    staked, unstaked = make_user("staked", funds=5_000), make_user("unstaked", funds=5_000)
    outbox.flush()
    chain_services.wallet_dev_create(user=staked)
    chain_services.withdrawal_request(user=staked, amount=1_500, to=Wallet.objects.get(user=staked).address or "")
    outbox.flush()
    chain_services.stake_dev(user=staked, amount=1_500)
    online = {"state": Provider.State.ONLINE, "channel_name": "specific.x", "last_seen": timezone.now()}
    good = Provider.objects.create(user=staked, name="good", ns_per_layer_token=100, **online)
    Provider.objects.create(user=unstaked, name="bare", ns_per_layer_token=50, **online)
    assert [p.pk for p in market_selectors.providers_free(exclude=set())] == [good.pk]
    # Unbonding below the minimum: no longer placed.
    chain_services.unbond_dev(user=staked, amount=600)
    assert market_selectors.providers_free(exclude=set()) == []
    # A stake that cannot be read (the chain is down) stops counting once its read grows old.
    # Staking again brings it back; then the chain stops answering.
    chain_services.withdrawal_request(user=staked, amount=500, to=Wallet.objects.get(user=staked).address or "")
    outbox.flush()
    chain_services.stake_dev(user=staked, amount=500)
    assert [p.pk for p in market_selectors.providers_free(exclude=set())] == [good.pk]
    chain_node.stop()
    chain_services.stakes_refresh_quietly()
    old = timezone.now() - timedelta(seconds=settings.CHAIN_STAKE_MAX_AGE_SECONDS + 1)  # type: ignore[attr-defined]
    Wallet.objects.filter(user=staked).update(stake_read_at=old)
    assert market_selectors.providers_free(exclude=set()) == []


def test_a_fresh_chain_under_the_same_database_is_redeployed_backed_and_reanchored(
    chain_node: AnvilNode, make_user: MakeUser, settings: object, tmp_path: object
) -> None:
    buyer, p1 = make_user("buyer", funds=50_000), make_user("p1")
    chain_services.wallet_dev_create(user=buyer)
    chain_services.withdrawal_request(user=buyer, amount=1_000, to=Wallet.objects.get(user=buyer).address or "")
    settle(buyer, [p1], "before")
    anchoring.anchor_pending()
    outbox.flush()
    assert reconcile(bridge.connect()).ok  # type: ignore[arg-type]
    chain_node.stop()
    # The node comes back with nothing (its state lost): a new chain under the same database.
    with AnvilNode() as fresh:
        settings.CHAIN_RPC_URL = fresh.url  # type: ignore[attr-defined]
        bridge.forget()
        settle(buyer, [p1], "after")
        anchoring.anchor_pending()
        outbox.flush()
        chain = bridge.connect()
        assert chain is not None
        r = reconcile(chain)
        assert r.ok, r.problems
        assert r.vault_balance == r.ledger_held  # the backfill issued what the ledger holds
        assert chain.call(chain.anchor.functions.batchCount()) == 2  # batch 0 anchored again, then batch 1
        assert anchor_problems(chain) == (2, [])
        proof = settlement_proof(job_ref="before")
        assert proof is not None and proof["anchor_state"] == ChainOp.State.MINED
        bridge.forget()


def test_staking_parameters_follow_the_settings_through_the_outbox(
    chain_node: AnvilNode, settings: object, make_user: MakeUser
) -> None:
    chain = bridge.connect()
    assert chain is not None and reconcile(chain).ok
    settings.CHAIN_MIN_STAKE = 2_500  # type: ignore[attr-defined]
    settings.CHAIN_CHALLENGER_SHARE_BPS = 1_000  # type: ignore[attr-defined]
    problems = reconcile(chain).problems
    assert any("minStake" in p for p in problems) and any("challengerShareBps" in p for p in problems)
    call_command("chain_params", "--apply")
    assert chain.call(chain.staking.functions.minStake()) == 2_500
    assert chain.call(chain.staking.functions.challengerShareBps()) == 1_000
    assert reconcile(chain).ok
    assert chain_services.staking_params_sync() == []  # nothing left to change


def test_an_unbonding_period_too_short_on_chain_is_reported(chain_node: AnvilNode, settings: object) -> None:
    chain = bridge.connect()
    assert chain is not None
    chain.transact(chain.staking.functions.setUnbondingPeriod(60))
    assert any("a cheater could withdraw" in p for p in reconcile(chain).problems)
