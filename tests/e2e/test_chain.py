"""The market on the full profile with a chain: PostgreSQL, Redis, Celery worker and beat, Daphne, headless
providers, and an Anvil of its own. Beat's `ledger.chain_sync` pays the provider's withdrawal to its wallet and
mirrors its stake; only staked providers are placed; beat's `ledger.chain_anchor` anchors the settlement, whose
proof the buyer fetches and the contract accepts; the ledger and the chain agree to the base unit at the end."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from eth_utils import to_checksum_address

from ledger.chain.anvil import DEV_KEYS, AnvilNode
from ledger.chain.client import Addresses, Chain
from market.localstack import LocalMarket

pytestmark = pytest.mark.slow

PG = "postgres://postgres@127.0.0.1:5432"
DATABASE = os.environ.get("E2E_CHAIN_DATABASE", "cm_e2e_chain")
REDIS_URL = f"redis://127.0.0.1:6379/{os.environ.get('E2E_CHAIN_REDIS_DB', '6')}"
STAKE = 50_000
CHEATER = Path(__file__).resolve().parents[1] / "verification" / "cheater.py"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalMarket, AnvilNode]]:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    redis.Redis.from_url(REDIS_URL).flushdb()
    work = tmp_path_factory.mktemp("e2e-chain")
    with AnvilNode(log=work / "anvil.log") as node:
        env = {
            "DATABASE_URL": f"{PG}/{DATABASE}",
            "REDIS_URL": REDIS_URL,
            "MEDIA_ROOT": str(work / "media"),
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "CHAIN_RPC_URL": node.url,
            "CHAIN_MIN_STAKE": str(STAKE),
            "CHAIN_SYNC_SECONDS": "1",
            "CHAIN_ANCHOR_EVERY_SECONDS": "2",
            # No random audits (the challenge test means its own check); a slash takes the whole stake.
            "AUDIT_FLOOR_PERMILLE": "0",
            "AUDIT_NEW_PERMILLE": "0",
            "SLASH_AMOUNT": str(10**15),
        }
        market = LocalMarket(env=env, logs=work / "logs")
        try:
            market.manage("migrate", "--noinput", "-v0")
            market.manage("import_model", "smollm2-135m", "--plan", "0-10,10-20,20-30", "--quant", "q4")
            market.start_server()
            yield market, node
        finally:
            market.stop()
            print(f"e2e chain logs: {work / 'logs'}")


def _chain_view(market: LocalMarket, token: str) -> dict[str, Any]:
    status, body = market.api("GET", "/api/account/chain/", token=token)
    assert status == 200, body
    return dict(body)


def test_staked_providers_serve_a_job_whose_settlement_is_anchored_and_ledger_and_chain_agree(
    stack: tuple[LocalMarket, AnvilNode],
) -> None:
    market, node = stack
    buyer = market.manage("issue_token", "buyer", "--create")
    staker = market.manage("issue_token", "staker", "--create")
    bare = market.manage("issue_token", "bare", "--create")

    # The provider gets a wallet, withdraws from its ledger balance to it (paid by beat's chain_sync) and stakes.
    assert market.api("POST", "/api/account/wallet/", token=staker, body={"dev": True})[0] == 201
    status, op = market.api("POST", "/api/account/withdraw/", token=staker, body={"amount": STAKE, "key": "stake"})
    assert status == 202, op
    market.wait(lambda: not _chain_view(market, staker)["pending_ops"], 60, "beat to pay the withdrawal on chain")
    status, view = market.api("POST", "/api/account/stake/", token=staker, body={"amount": STAKE})
    assert status == 200 and view["stake"] == STAKE and view["can_take_work"], view
    assert not _chain_view(market, bare)["can_take_work"]

    # Three staked providers and one unstaked one: the unstaked one is online but never placed.
    for index in range(3):
        market.start_provider(f"staked-{index}", token=staker)
    market.start_provider("bare-0", token=bare)
    market.wait(lambda: len(market.online_providers(buyer)) == 4, 180, "four benchmarked providers")
    bare_ids = {p["id"] for p in market.online_providers(buyer) if p["name"] == "bare-0"}
    for _ in range(2):
        bid = market.submit(buyer, model="smollm2-135m", prompt="Name a colour.", max_new_tokens=8)
        market.stream(bid["id"], buyer)
        _, job = market.api("GET", f"/api/jobs/{bid['id']}/", token=buyer)
        assert job["state"] == "done", job
        assert not {hop["provider"] for hop in job["pipeline"]} & bare_ids

    # Beat anchors the settlement; the buyer's proof checks with the contract; another buyer cannot read it.
    def anchored() -> bool:
        status, proof = market.api("GET", f"/api/jobs/{job['id']}/proof/", token=buyer)
        return status == 200 and proof["anchor_state"] == "mined"

    market.wait(anchored, 60, "beat to anchor the settlement")
    _, proof = market.api("GET", f"/api/jobs/{job['id']}/proof/", token=buyer)
    assert market.api("GET", f"/api/jobs/{job['id']}/proof/", token=bare)[0] == 404
    addresses = dict(_deployed(market))
    deployed = Addresses(
        token=addresses["MarketToken"],
        vault=addresses["MarketVault"],
        staking=addresses["Staking"],
        anchor=addresses["SettlementAnchor"],
    )
    chain = Chain(node.url, DEV_KEYS[0], deployed)
    job_ref, escrow, paid, fee, refund, payouts = proof["values"]
    verify = chain.anchor.functions.verifySettlement
    args = [proof["batch_id"], [bytes.fromhex(p[2:]) for p in proof["proof"]], job_ref, escrow, paid, fee, refund]
    assert chain.call(verify(*args, bytes.fromhex(payouts[2:]))) is True
    assert chain.call(verify(*args[:6], refund + 1, bytes.fromhex(payouts[2:]))) is False

    out = market.manage("ledger_check")
    assert "ledger ok" in out and "chain ok" in out, out
    assert "anchors ok" in market.manage("verify_anchors")


def test_a_staked_cheater_challenged_by_a_buyer_is_slashed_on_chain_and_the_challenger_paid(
    stack: tuple[LocalMarket, AnvilNode], tmp_path: Path
) -> None:
    """Three provider processes of one staked user, one of which adds noise to a layer of the middle shard; the
    buyer (with a wallet) challenges: the verdict is fraud at that layer, the slash lands on chain under the
    verdict's evidence hash with half to the buyer's wallet, the buyer is refunded in full, and the ledger and
    the chain still agree to the base unit."""
    market, node = stack
    buyer = market.manage("issue_token", "challenger", "--create")
    cheat = market.manage("issue_token", "cheat", "--create")
    for token in (buyer, cheat):
        assert market.api("POST", "/api/account/wallet/", token=token, body={"dev": True})[0] == 201
    status, op = market.api("POST", "/api/account/withdraw/", token=cheat, body={"amount": STAKE, "key": "stake"})
    assert status == 202, op
    market.wait(lambda: not _chain_view(market, cheat)["pending_ops"], 60, "beat to pay the withdrawal on chain")
    assert market.api("POST", "/api/account/stake/", token=cheat, body={"amount": STAKE})[0] == 200
    for name in [n for n in market.processes if n.startswith(("staked-", "bare-"))]:
        market.kill(name, signal.SIGTERM)
    cheat_file = tmp_path / "cheat.json"
    cheat_file.write_text(json.dumps({"shard_first": 10, "kind": "noise", "layer": 4, "scale": 0.05}))
    for index in range(3):
        argv = [sys.executable, str(CHEATER), "--server", market.url, "--token", cheat, "--name", f"cheat-{index}"]
        argv += ["--cache-dir", str(tmp_path / f"cache-{index}")]
        market.spawn(f"cheat-{index}", argv, CHEAT_FILE=str(cheat_file), INFERENCE_THREADS="1")
    market.wait(
        lambda: sum(p["name"].startswith("cheat-") for p in market.online_providers(buyer)) == 3, 180, "cheaters"
    )
    before = dict(market.api("GET", "/api/account/", token=buyer)[1])
    bid = market.submit(buyer, model="smollm2-135m", prompt="Name a colour.", max_new_tokens=8)
    market.stream(bid["id"], buyer)
    status, body = market.api("POST", f"/api/jobs/{bid['id']}/challenge/", token=buyer)
    assert status == 201, body

    def decided() -> dict[str, Any] | None:
        view = dict(market.api("GET", f"/api/jobs/{bid['id']}/verification/", token=buyer)[1])
        return view if view["state"] in ("fraud", "verified") else None

    market.wait(lambda: decided() is not None, 240, "the verdict")
    view = decided()
    assert view is not None and view["state"] == "fraud", view
    fraud = next(d for d in view["disputes"] if d["state"] == "fraud")
    assert (fraud["step"], fraud["hop"], fraud["layer"]) == (0, 1, 14), fraud
    assert dict(market.api("GET", "/api/account/", token=buyer)[1])["available"] == before["available"]

    market.wait(lambda: not _chain_view(market, cheat)["pending_ops"], 60, "beat to send the slash")
    addresses = dict(_deployed(market))
    chain = Chain(
        node.url,
        DEV_KEYS[0],
        Addresses(
            token=addresses["MarketToken"],
            vault=addresses["MarketVault"],
            staking=addresses["Staking"],
            anchor=addresses["SettlementAnchor"],
        ),
    )
    staker, challenger = _chain_view(market, cheat)["address"], _chain_view(market, buyer)["address"]
    active, _, _, slashed = chain.call(chain.staking.functions.stakeOf(to_checksum_address(staker)))
    assert (active, slashed) == (0, STAKE)
    evidence = bytes.fromhex(fraud["evidence_hash"][2:])
    assert chain.call(chain.staking.functions.evidenceUsed(evidence)) is True
    share = chain.call(chain.staking.functions.challengerShareBps())
    held = chain.call(chain.token.functions.balanceOf(to_checksum_address(challenger)))
    assert held == STAKE * share // 10_000
    assert not _chain_view(market, cheat)["can_take_work"]

    out = market.manage("ledger_check")
    assert "ledger ok" in out and "chain ok" in out, out


def _deployed(market: LocalMarket) -> list[tuple[str, str]]:
    with psycopg.connect(f"{PG}/{DATABASE}") as conn:
        return [(str(n), str(a)) for n, a in conn.execute("SELECT name, address FROM ledger_chaindeployment")]
