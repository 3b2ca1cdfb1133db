"""The market on the full profile with a chain: PostgreSQL, Redis, Celery worker and beat, Daphne, headless
providers, and an Anvil of its own. Beat's `ledger.chain_sync` pays the provider's withdrawal to its wallet and
mirrors its stake; only staked providers are placed; beat's `ledger.chain_anchor` anchors the settlement, whose
proof the buyer fetches and the contract accepts; the ledger and the chain agree to the base unit at the end."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis

from ledger.chain.anvil import DEV_KEYS, AnvilNode
from ledger.chain.client import Addresses, Chain
from market.localstack import LocalMarket

pytestmark = pytest.mark.slow

PG = "postgres://postgres@127.0.0.1:5432"
DATABASE = os.environ.get("E2E_CHAIN_DATABASE", "cm_e2e_chain")
REDIS_URL = f"redis://127.0.0.1:6379/{os.environ.get('E2E_CHAIN_REDIS_DB', '6')}"
STAKE = 50_000


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


def _deployed(market: LocalMarket) -> list[tuple[str, str]]:
    with psycopg.connect(f"{PG}/{DATABASE}") as conn:
        return [(str(n), str(a)) for n, a in conn.execute("SELECT name, address FROM ledger_chaindeployment")]
