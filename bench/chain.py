"""What the market's chain costs: gas per call, gas per settled job when anchored in batches, deposit-to-credit time.

Everything goes through the market's own services against a real Anvil (started here from node_modules), as the
running market would drive them: dev wallets sign the users' calls (stake_dev, unbond_dev, unbonded_withdraw_dev,
deposit_dev), the operator's calls (vault issue behind a mint, vault withdraw, slash, anchor) go through the outbox,
whose ChainOp rows record their gas. The gas of a user's call is read from the receipts of the blocks its service
mined (Anvil mines one block per transaction).

1. Gas per call, each round with a fresh provider: the mint's backing (vault issue), a withdrawal to its dev wallet
   (vault withdraw), approve + stake, requestUnbond, withdraw of the unbonded stake (after the unbonding period, the
   chain's clock moved forward), a slash (slash_request + flush), approve + vault deposit, an anchor of one job.
2. Gas per job: for each batch size N, N jobs escrowed and settled (three providers each), anchor_pending(max_leaves=N)
   and a flush. An anchor posts one Merkle root, so its gas hardly depends on N and gas per job = anchor gas / N.
3. Deposit to credit: deposit_dev (approve + deposit, returns after the deposit's receipt), then deposits_watch
   (credits the Deposited log), back to back, so the figure leaves out the watcher's polling interval
   (CHAIN_SYNC_SECONDS in the running market) and any confirmations it is asked to wait for.

    .venv/bin/python bench/chain.py [--rounds 5] [--batch-sizes 1,10,100,1000] [--deposits 20]

Runs in its own SQLite database (a temporary file, made and migrated by Django's test-database machinery, removed at
the end); DATABASE_URL is ignored. Prints a JSON document and a one-line summary; writes bench/results/chain.json and
chain.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
SHARDS = 3  # providers per job, one per shard
PROVIDERS = 24  # providers the jobs pay
ESCROW = 10_000  # base units per job: the buyer's maximum price
FEE_BPS = 500  # the platform's fee, 5 % of what the providers earn
STAKE = 3_000_000  # base units a provider stakes each round (above the default CHAIN_MIN_STAKE of 1,000,000)
UNBOND = 1_000_000  # of which it unbonds, then withdraws
SLASH = 500_000  # of which a slash takes
DEPOSIT = 1_000  # base units per deposit
DEPOSIT_NOTE = (
    "mine: deposit_dev (approve + deposit, each signed with a gas estimate, sent, its receipt awaited); credit: "
    "deposits_watch right after. The slow mode (+50 ms) is the client's receipt poll interval (Chain.receipt, "
    "poll_latency 0.05 s) when a receipt is not there at the first look. The running market's watcher polls every "
    "CHAIN_SYNC_SECONDS, which adds up to that much."
)
# Bars of the gas panel, in this order: label -> the call it measures.
CALLS = {
    "vault issue": "MarketVault.issue (the backing of a ledger mint, outbox)",
    "vault withdraw": "MarketVault.withdraw (a ledger withdrawal, outbox)",
    "stake: approve": "MarketToken.approve (stake_dev)",
    "stake: stake": "Staking.stake (stake_dev)",
    "requestUnbond": "Staking.requestUnbond (unbond_dev)",
    "withdraw unbonded": "Staking.withdraw (unbonded_withdraw_dev, after the unbonding period)",
    "slash": "Staking.slash (slash_request, outbox)",
    "deposit: approve": "MarketToken.approve (deposit_dev)",
    "vault deposit": "MarketVault.deposit (deposit_dev)",
    "anchor": "SettlementAnchor.anchor of a batch of one job (anchor_pending, outbox)",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-sizes", default="1,10,100,1000", help="jobs per anchor, comma-separated")
    parser.add_argument("--deposits", type=int, default=20, help="deposits per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="chain", help="results go to bench/results/<name>.json and .png")
    args = parser.parse_args()
    args.batch_sizes = sorted({int(n) for n in args.batch_sizes.split(",")})
    return args


def setup_django() -> None:
    os.environ.pop("DATABASE_URL", None)  # SQLite, in a temporary file (with_database)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


@contextmanager
def database() -> Iterator[None]:
    """A fresh, migrated SQLite database in a temporary file, removed at the end."""
    from django.db import connection

    with tempfile.TemporaryDirectory(prefix="bench-chain-") as tmp:
        connection.settings_dict["TEST"]["NAME"] = str(Path(tmp) / "bench_chain.sqlite3")
        original = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
        try:
            yield
        finally:
            connection.creation.destroy_test_db(original, verbosity=0)


@contextmanager
def market_chain() -> Iterator[str]:
    """An Anvil node that the market's settings point at, its contracts deployed by the bridge; yields its URL."""
    from django.conf import settings

    from ledger.chain import bridge
    from ledger.chain.anvil import DEV_KEYS, AnvilNode

    with AnvilNode() as node:
        settings.CHAIN_RPC_URL = node.url
        settings.CHAIN_DEV_WALLETS = True
        settings.CHAIN_OPERATOR_KEY = settings.CHAIN_OPERATOR_KEY or DEV_KEYS[0]  # empty when PRODUCTION is true
        bridge.forget()
        bridge.connect()
        try:
            yield node.url
        finally:
            bridge.forget()


# --- helpers --------------------------------------------------------------------------------------------------------


def chain() -> Any:
    from ledger.chain import bridge

    connected = bridge.connect()
    assert connected is not None
    return connected


def mined_gas(op: Any) -> int:
    """Flush the outbox and return the gas of `op` (which must be mined by then)."""
    from ledger.chain import outbox
    from ledger.chain.models import ChainOp

    outbox.flush()
    op.refresh_from_db()
    if op.state != ChainOp.State.MINED or op.gas_used is None:
        raise RuntimeError(f"chain op {op.key} is {op.state}: {op.last_error}")
    return int(op.gas_used)


def calls_mined_by(service: Callable[[], object]) -> list[tuple[str, int]]:
    """Run `service` and return ("Contract.function", gas used) for each transaction mined meanwhile, in order."""
    from ledger.chain.client import CONTRACTS

    c = chain()
    names = {a.lower(): n for n, a in zip(CONTRACTS, c.addresses.as_dict().values(), strict=True)}  # field order
    first = int(c.w3.eth.block_number) + 1
    service()
    calls = []
    for number in range(first, int(c.w3.eth.block_number) + 1):
        for tx in c.w3.eth.get_block(number, full_transactions=True)["transactions"]:
            name = names[str(tx["to"]).lower()]
            function, _ = c.contract(name).decode_function_input(tx["input"])
            calls.append((f"{name}.{function.fn_name}", int(c.w3.eth.get_transaction_receipt(tx["hash"])["gasUsed"])))
    return calls


def gas_of(calls: list[tuple[str, int]], *expected: str) -> list[int]:
    if [name for name, _ in calls] != list(expected):
        raise RuntimeError(f"expected the calls {expected}, the service made {calls}")
    return [gas for _, gas in calls]


def funded_wallet(user: Any, amount: int, key: str) -> tuple[int, int]:
    """Mint `amount` to `user`, give it a dev wallet and withdraw the amount to it; (issue gas, withdraw gas)."""
    from ledger import services
    from ledger.chain.models import ChainOp
    from ledger.services import chain as chain_services

    tx = services.mint_as_system(to_user=user, amount=amount, key=key)
    issue = mined_gas(ChainOp.objects.get(key=f"issue:{tx.idempotency_key}"))
    wallet = chain_services.wallet_dev_create(user=user)
    op = chain_services.withdrawal_request(user=user, amount=amount, to=wallet.address or "", key=key)
    return issue, mined_gas(op)


def settle_jobs(prefix: str, n: int, buyer: Any, providers: list[Any], rng: random.Random) -> None:
    """Escrow and settle `n` jobs of `buyer`, each paying three random providers and the fee (as bench/ledger.py)."""
    from ledger import services

    for i in range(n):
        job_ref = f"{prefix}-{i}"
        services.escrow_for_job(user=buyer, amount=ESCROW, job_ref=job_ref)
        payouts = [(p, rng.randint(500, 2_500)) for p in rng.sample(providers, SHARDS)]
        fee = sum(a for _, a in payouts) * FEE_BPS // 10_000
        services.settle_job(job_ref=job_ref, buyer=buyer, payouts=payouts, fee=fee)


def anchor(n: int) -> tuple[Any, float, int]:
    """Anchor the `n` settlements not anchored yet: (the batch, anchor_pending's wall time in ms, the anchor's gas)."""
    from ledger.services import anchoring

    began = time.perf_counter()
    batch = anchoring.anchor_pending(max_leaves=n)
    ms = (time.perf_counter() - began) * 1000
    if batch is None or batch.count != n:
        raise RuntimeError(f"expected a batch of {n} settlements, got {batch and batch.count}")
    return batch, ms, mined_gas(batch.op)


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "p90": round(percentile(values, 90), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


# --- the three measurements -----------------------------------------------------------------------------------------


def measure_gas(rounds: int, url: str, buyer: Any, providers: list[Any], rng: random.Random) -> dict[str, Any]:
    """Round 0 on the freshly deployed contracts (some of their storage slots go from zero, which costs more:
    reported as `first_round`), then `rounds` steady-state rounds, whose median is the figure."""
    samples: dict[str, list[int]] = {label: [] for label in CALLS}
    for r in range(rounds + 1):
        row = gas_round(r, url, buyer, providers, rng)
        for label, gas in zip(CALLS, row, strict=True):
            samples[label].append(gas)
        print(f"gas round {r}/{rounds}: {dict(zip(CALLS, row, strict=True))}", file=sys.stderr)
    return {
        label: {
            "call": CALLS[label],
            "median": int(statistics.median(gas[1:])),
            "min": min(gas[1:]),
            "max": max(gas[1:]),
            "first_round": gas[0],
            "rounds": gas[1:],
        }
        for label, gas in samples.items()
    }


def gas_round(r: int, url: str, buyer: Any, providers: list[Any], rng: random.Random) -> tuple[int, ...]:
    """A fresh provider through the whole stake life cycle, then the anchor of one settled job; gas in CALLS order."""
    from django.conf import settings
    from django.contrib.auth.models import User
    from eth_account import Account as EthAccount

    from ledger.chain.anvil import increase_time
    from ledger.services import chain as chain_services

    user = User.objects.create_user(username=f"staker{r}")
    issue, withdraw = funded_wallet(user, STAKE + DEPOSIT, key=f"bench-stake:{r}")
    calls = calls_mined_by(lambda: chain_services.stake_dev(user=user, amount=STAKE))
    approve, stake = gas_of(calls, "MarketToken.approve", "Staking.stake")
    (unbond,) = gas_of(
        calls_mined_by(lambda: chain_services.unbond_dev(user=user, amount=UNBOND)), "Staking.requestUnbond"
    )
    increase_time(url, settings.CHAIN_UNBONDING_SECONDS + 1)
    (unbonded,) = gas_of(calls_mined_by(lambda: chain_services.unbonded_withdraw_dev(user=user)), "Staking.withdraw")
    evidence = "0x" + hashlib.sha256(f"bench-evidence:{r}".encode()).hexdigest()  # 32 bytes naming the fraud
    challenger = EthAccount.create().address
    slash = mined_gas(
        chain_services.slash_request(provider=user, amount=SLASH, evidence_hash=evidence, challenger=challenger)
    )
    calls = calls_mined_by(lambda: chain_services.deposit_dev(user=user, amount=DEPOSIT))
    deposit_approve, deposit = gas_of(calls, "MarketToken.approve", "MarketVault.deposit")
    settle_jobs(f"gas{r}", 1, buyer, providers, rng)
    _, _, anchor_gas = anchor(1)
    return (issue, withdraw, approve, stake, unbond, unbonded, slash, deposit_approve, deposit, anchor_gas)


def measure_anchors(sizes: list[int], rounds: int, buyer: Any, providers: list[Any], rng: random.Random) -> list[Any]:
    """For each batch size N: settle N jobs, anchor them in one batch; its gas, gas per job and build times."""
    from ledger.chain.merkle import MerkleTree
    from ledger.chain.models import SettlementLeaf

    c = chain()
    rows = []
    for n in sizes:
        began = time.perf_counter()
        settle_jobs(f"batch{n}", n, buyer, providers, rng)
        settle_s = time.perf_counter() - began
        batch, pending_ms, gas = anchor(n)
        leaves = [
            bytes.fromhex(leaf[2:])
            for leaf in SettlementLeaf.objects.filter(batch=batch).values_list("leaf", flat=True)
        ]
        tree_ms = []
        for _ in range(max(rounds, 3)):
            began = time.perf_counter()
            tree = MerkleTree.of_leaves(leaves)
            tree_ms.append((time.perf_counter() - began) * 1000)
        on_chain_root, count, *_ = c.call(c.anchor.functions.batch(batch.batch_id))
        if "0x" + tree.root.hex() != batch.root or "0x" + bytes(on_chain_root).hex() != batch.root or count != n:
            raise RuntimeError(f"batch {batch.batch_id}: the root on chain is not the ledger's")
        rows.append(
            {
                "jobs": n,
                "anchor_gas": gas,
                "gas_per_job": round(gas / n, 1),
                "merkle_tree_ms": round(statistics.median(tree_ms), 3),
                "anchor_pending_ms": round(pending_ms, 2),
                "settle_jobs_s": round(settle_s, 2),
            }
        )
        print(f"anchor of {n} jobs: {gas} gas, {gas / n:.1f} per job", file=sys.stderr)
    return rows


def measure_deposits(rounds: int, per_round: int) -> dict[str, Any]:
    """Deposits from one dev wallet, each credited by the watcher right after its receipt."""
    from django.contrib.auth.models import User

    from ledger.services import chain as chain_services

    user = User.objects.create_user(username="depositor")
    funded_wallet(user, rounds * per_round * DEPOSIT, key="bench-deposits")
    chain_services.deposits_watch()  # the first scan starts at block 0: out of the timed loop
    mine: list[float] = []
    credit: list[float] = []
    for r in range(rounds):
        for _ in range(per_round):
            began = time.perf_counter()
            chain_services.deposit_dev(user=user, amount=DEPOSIT)
            mined = time.perf_counter()
            credited = chain_services.deposits_watch()
            done = time.perf_counter()
            if credited != 1:
                raise RuntimeError(f"the watcher credited {credited} deposits, expected 1")
            mine.append((mined - began) * 1000)
            credit.append((done - mined) * 1000)
        print(f"deposits round {r + 1}/{rounds}: median {statistics.median(mine[-per_round:]):.1f} ms", file=sys.stderr)
    total = [a + b for a, b in zip(mine, credit, strict=True)]
    return {
        "deposits": len(total),
        "total_ms": summary(total),
        "mine_ms": summary(mine),
        "credit_ms": summary(credit),
        "samples_ms": {"mine": [round(x, 2) for x in mine], "credit": [round(x, 2) for x in credit]},
    }


# --- the run --------------------------------------------------------------------------------------------------------


def measure(args: argparse.Namespace, url: str) -> dict[str, Any]:
    from django.contrib.auth.models import User

    from ledger import services
    from ledger.chain import outbox

    rng = random.Random(args.seed)
    buyer = User.objects.create_user(username="buyer")
    providers = [User.objects.create_user(username=f"provider{i}") for i in range(PROVIDERS)]
    jobs = args.rounds + 1 + sum(args.batch_sizes)  # one per gas round (and round 0), then the batches
    services.mint_as_system(to_user=buyer, amount=jobs * ESCROW, key="bench-buyer")
    outbox.flush()
    began = time.monotonic()
    gas = measure_gas(args.rounds, url, buyer, providers, rng)
    anchors = measure_anchors(args.batch_sizes, args.rounds, buyer, providers, rng)
    deposits = measure_deposits(args.rounds, args.deposits)
    return report(args, gas, anchors, deposits, time.monotonic() - began)


def report(
    args: argparse.Namespace, gas: dict[str, Any], anchors: list[Any], deposits: dict[str, Any], seconds: float
) -> dict[str, Any]:
    import web3
    from django.conf import settings

    from ledger.chain.anvil import anvil_binary
    from ledger.chain.models import ChainOp
    from ledger.selectors import ledger_drift

    drift = ledger_drift()
    anvil = subprocess.run([str(anvil_binary()), "--version"], capture_output=True, text=True, check=True).stdout
    return {
        "benchmark": "chain",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "anvil": anvil.splitlines()[0].strip(),
            "web3": web3.__version__,
            "database": f"SQLite {sqlite3.sqlite_version}",
        },
        "rounds": args.rounds,
        "gas_per_call": gas,
        "anchors": anchors,
        "anchor_max_leaves_setting": settings.CHAIN_ANCHOR_MAX_LEAVES,
        "deposit_to_credit": deposits | {"deposits_per_round": args.deposits, "measures": DEPOSIT_NOTE},
        "chain_ops_not_mined": ChainOp.objects.exclude(state=ChainOp.State.MINED).count(),
        "ledger": {"drift": drift.drift, "ok": drift.ok},
        "backing": backing(),
        "seconds": round(seconds, 1),
    }


def backing() -> dict[str, Any]:
    """Every base unit the ledger holds (outside the mint and the bridge) is a token in the vault."""
    from ledger.models import Account

    c = chain()
    vault = int(c.call(c.token.functions.balanceOf(c.vault.address)))
    kinds = [Account.Kind.MINT, Account.Kind.BRIDGE]
    held = sum(Account.objects.exclude(kind__in=kinds).values_list("balance", flat=True))
    return {"vault_tokens": vault, "ledger_held": held, "ok": vault == held}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, per_job, latency) = plt.subplots(1, 3, figsize=(16, 4.8))
    labels = list(result["gas_per_call"])
    medians = [result["gas_per_call"][label]["median"] for label in labels]
    bars.barh(labels, medians, color="#4c72b0")
    for y, gas in enumerate(medians):
        bars.text(gas, y, f" {gas:,}", va="center", fontsize=8)
    bars.invert_yaxis()
    bars.set_xlim(0, max(medians) * 1.3)
    bars.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:.0f}k")
    bars.set_xlabel(f"gas per call (median of {result['rounds']} rounds)")
    bars.set_title("Gas per call")

    jobs = [row["jobs"] for row in result["anchors"]]
    per_job.loglog(jobs, [row["gas_per_job"] for row in result["anchors"]], "o-", color="#55a868")
    for row in result["anchors"]:
        per_job.annotate(f"{row['gas_per_job']:,.0f}", (row["jobs"], row["gas_per_job"]), fontsize=8)
    per_job.set_xlabel("jobs per anchor (batch size)")
    per_job.set_ylabel("anchor gas per job")
    per_job.set_title(f"Anchoring: one root, {result['anchors'][-1]['anchor_gas']:,} gas per batch")
    per_job.grid(True, which="both", alpha=0.3)

    samples = result["deposit_to_credit"]["samples_ms"]
    total = [a + b for a, b in zip(samples["mine"], samples["credit"], strict=True)]
    top = percentile(total, 99) * 1.2
    edges = [top * i / 40 for i in range(41)]
    for values, name in ((samples["mine"], "mine"), (samples["credit"], "watcher credit"), (total, "total")):
        latency.hist(values, bins=edges, histtype="step", linewidth=1.5, label=name)
    stats = result["deposit_to_credit"]["total_ms"]
    latency.set_xlabel("ms")
    latency.set_ylabel("deposits")
    latency.set_title(f"Deposit to credit: median {stats['median']:.0f} ms, p90 {stats['p90']:.0f} ms")
    latency.legend()
    machine = result["machine"]
    fig.suptitle(f"The market's chain: {machine['anvil']}, web3 {machine['web3']}, {machine['cpus']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def summary_line(result: dict[str, Any]) -> str:
    gas = {label: row["median"] for label, row in result["gas_per_call"].items()}
    per_job = ", ".join(f"{row['jobs']}: {row['gas_per_job']:,.0f}" for row in result["anchors"])
    dep = result["deposit_to_credit"]
    ok = result["ledger"]["ok"] and result["backing"]["ok"]
    return (
        f"chain gas: issue {gas['vault issue']:,}, withdraw {gas['vault withdraw']:,}, "
        f"stake {gas['stake: approve']:,}+{gas['stake: stake']:,}, unbond {gas['requestUnbond']:,}, "
        f"unbonded withdraw {gas['withdraw unbonded']:,}, slash {gas['slash']:,}, "
        f"deposit {gas['deposit: approve']:,}+{gas['vault deposit']:,}, anchor {gas['anchor']:,} | "
        f"anchor gas/job by batch size {per_job} | deposit->credit median {dep['total_ms']['median']:.1f} ms, "
        f"p90 {dep['total_ms']['p90']:.1f} ms (mine {dep['mine_ms']['median']:.1f} + credit "
        f"{dep['credit_ms']['median']:.1f}) over {dep['deposits']} | ledger and backing {'ok' if ok else 'FAILED'}"
    )


def main() -> None:
    args = parse_args()
    setup_django()
    with database(), market_chain() as url:
        result = measure(args, url)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / f"{args.name}.png")
    print(json.dumps(result, indent=2))
    print(summary_line(result))
    if not (result["ledger"]["ok"] and result["backing"]["ok"]) or result["chain_ops_not_mined"]:
        sys.exit(f"ledger ok: {result['ledger']['ok']}, backing ok: {result['backing']['ok']}")


if __name__ == "__main__":
    main()
