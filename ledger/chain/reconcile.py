"""Does the chain agree with the ledger? Reads both and explains every difference.

The rule the bridge keeps: every base unit the ledger holds (all balances outside the mint and the bridge) is a
token in the vault, except what is in flight: withdrawals debited but not paid yet, mints whose backing is not
issued yet, deposits on chain not credited yet. So

    vault balance == ledger held + withdrawals in flight - backing in flight + deposits not credited

and, event by event: the vault's Issued logs sum to what the ledger minted minus the backing in flight, its
WithdrawalPaid logs to the withdrawals the outbox saw mined, its Deposited logs to the deposits recorded. Each
settlement batch recomputed from the ledger must give the root anchored on chain (`anchor_problems`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Sum

from ledger.chain import bridge
from ledger.chain.client import Chain
from ledger.chain.merkle import MerkleTree
from ledger.chain.models import ChainDeposit, ChainOp, SettlementBatch, Wallet
from ledger.chain.ops import IN_FLIGHT, ops_total
from ledger.selectors import ledger_held, total_minted
from ledger.services.anchoring import settlement_values, values_leaf

OpKind, OpState = ChainOp.Kind, ChainOp.State


@dataclass
class Reconciliation:
    vault_balance: int = 0
    ledger_held: int = 0  # balances outside the mint and the bridge
    withdrawals_in_flight: int = 0
    backing_in_flight: int = 0
    deposits_uncredited: int = 0
    issued_on_chain: int = 0
    minted_in_ledger: int = 0
    issues_mined: int = 0
    withdrawn_on_chain: int = 0
    withdrawals_mined: int = 0
    deposited_on_chain: int = 0
    deposits_recorded: int = 0
    wallets_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _logs_total(event: object, argument: str) -> tuple[int, int]:
    logs = event.get_logs(from_block=0)  # type: ignore[attr-defined]
    return sum(int(entry["args"][argument]) for entry in logs), len(logs)


def reconcile(chain: Chain) -> Reconciliation:
    r = Reconciliation()
    r.vault_balance = int(chain.call(chain.token.functions.balanceOf(chain.vault.address)))
    r.ledger_held = ledger_held()
    r.withdrawals_in_flight = ops_total(OpKind.WITHDRAW, IN_FLIGHT)
    r.backing_in_flight = ops_total(OpKind.ISSUE, IN_FLIGHT)
    r.issued_on_chain, _ = _logs_total(chain.vault.events.Issued(), "amount")
    r.withdrawn_on_chain, _ = _logs_total(chain.vault.events.WithdrawalPaid(), "amount")
    r.deposited_on_chain, deposit_logs = _logs_total(chain.vault.events.Deposited(), "amount")
    r.minted_in_ledger = total_minted()
    r.issues_mined = ops_total(OpKind.ISSUE, (OpState.MINED,))
    r.withdrawals_mined = ops_total(OpKind.WITHDRAW, (OpState.MINED,))
    deposits = ChainDeposit.objects.filter(epoch=bridge.epoch())
    credited = deposits.exclude(credit=None).aggregate(total=Sum("amount"))["total"] or 0
    r.deposits_recorded = int(deposits.aggregate(total=Sum("amount"))["total"] or 0)
    r.deposits_uncredited = r.deposited_on_chain - int(credited)
    expected_vault = r.ledger_held + r.withdrawals_in_flight - r.backing_in_flight + r.deposits_uncredited
    if r.vault_balance != expected_vault:
        r.problems.append(
            f"the vault holds {r.vault_balance} base units but the ledger accounts for {expected_vault} (held "
            f"{r.ledger_held} + withdrawals in flight {r.withdrawals_in_flight} - backing in flight "
            f"{r.backing_in_flight} + deposits not credited {r.deposits_uncredited})"
        )
    if r.issued_on_chain != r.issues_mined:
        r.problems.append(f"the vault issued {r.issued_on_chain}; the outbox saw {r.issues_mined} issued")
    if r.withdrawn_on_chain != r.withdrawals_mined:
        r.problems.append(f"the vault paid {r.withdrawn_on_chain} in withdrawals; the outbox saw {r.withdrawals_mined}")
    if deposits.count() > deposit_logs:
        r.problems.append("the ledger recorded deposits that have no Deposited log on chain")
    r.problems += _stake_problems(chain, r)
    r.problems += parameter_problems(chain)
    return r


def parameter_problems(chain: Chain) -> list[str]:
    """Staking's deployed parameters against the market's settings: the unbonding period must outlast the challenge
    window plus a dispute on chain too, not only in the settings."""
    period = int(chain.call(chain.staking.functions.unbondingPeriod()))
    needed = settings.CHALLENGE_WINDOW_SECONDS + settings.CHAIN_DISPUTE_SECONDS
    problems = []
    if period <= needed:
        problems.append(
            f"Staking's unbonding period is {period} s on chain, not more than the challenge window plus a dispute "
            f"({needed} s): a cheater could withdraw before it is slashed"
        )
    for name, wanted in staking_settings().items():
        deployed = chain.call(getattr(chain.staking.functions, name)())
        if str(deployed).lower() != str(wanted).lower():
            problems.append(f"Staking.{name} is {deployed} on chain but {wanted} in the settings (run chain_params)")
    return problems


def staking_settings() -> dict[str, object]:
    """Staking's parameters as the settings want them, by the contract's getter names."""
    params = bridge.staking_params()
    return {
        "minStake": params.min_stake,
        "unbondingPeriod": params.unbonding_period,
        "challengerShareBps": params.challenger_share_bps,
        "treasury": params.treasury,
    }


def _stake_problems(chain: Chain, r: Reconciliation) -> list[str]:
    """A mirror that shows more active stake than the chain holds would place an under-staked provider."""
    problems = []
    for wallet in Wallet.objects.exclude(address=None).exclude(stake_read_at=None):
        active, *_ = chain.call(chain.staking.functions.stakeOf(wallet.address))
        r.wallets_checked += 1
        if wallet.stake_active > int(active):
            problems.append(f"wallet {wallet.address}: mirrored stake {wallet.stake_active} > {int(active)} on chain")
    return problems


def anchor_problems(chain: Chain | None) -> tuple[int, list[str]]:
    """Recompute every batch from the ledger and compare with what was recorded and (when mined) anchored on
    chain. Returns (batches checked, problems)."""
    problems: list[str] = []
    batches = SettlementBatch.objects.select_related("op").prefetch_related("leaves__settlement__entries__account")
    for batch in batches:
        leaves = []
        for leaf in batch.leaves.all():
            values = settlement_values(leaf.settlement)
            if values != leaf.values:
                problems.append(
                    f"batch {batch.batch_id}: {leaf.job_ref}'s settlement changed: {values} != {leaf.values}"
                )
            leaves.append(values_leaf(values))
        root = "0x" + MerkleTree.of_leaves(leaves).root.hex()
        total = sum(int(v[2]) + int(v[3]) for v in (leaf.values for leaf in batch.leaves.all()))
        if root != batch.root or len(leaves) != batch.count or total != batch.total:
            problems.append(f"batch {batch.batch_id}: recomputed root {root} differs from the recorded {batch.root}")
        if chain is None or batch.op.state != OpState.MINED:
            continue
        on_root, on_count, on_total, _ = chain.call(chain.anchor.functions.batch(batch.batch_id))
        if ("0x" + bytes(on_root).hex(), int(on_count), int(on_total)) != (root, len(leaves), total):
            problems.append(
                f"batch {batch.batch_id}: the chain holds root 0x{bytes(on_root).hex()} ({on_count} leaves, "
                f"total {on_total}); the ledger gives {root} ({len(leaves)}, {total})"
            )
    return batches.count(), problems
