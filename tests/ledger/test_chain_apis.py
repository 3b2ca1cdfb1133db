"""The chain API on a real Anvil: wallet, withdraw, stake, unbond, deposit; clear errors that change nothing; the
chain down answered with 503 while the account keeps answering; owner / other user / anonymous."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from ledger.chain import outbox
from ledger.chain.anvil import AnvilNode
from ledger.models import Account
from tests.ledger.conftest import Books, MakeUser

pytestmark = pytest.mark.django_db


def api(user: User | None = None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def post(user: User | None, path: str, body: object) -> tuple[int, dict[str, object]]:
    response = api(user).post(path, body, format="json")
    return response.status_code, response.json()


def test_a_provider_gets_a_wallet_withdraws_to_it_stakes_and_unbonds(
    chain_node: AnvilNode, make_user: MakeUser, books: Books
) -> None:
    alice = make_user("alice", funds=10_000)
    status, view = post(alice, "/api/account/wallet/", {"dev": True})
    assert status == 201 and view["dev_wallet"] is True and str(view["address"]).startswith("0x")
    status, op = post(alice, "/api/account/withdraw/", {"amount": 4_000, "key": "first"})
    assert status == 202 and op["kind"] == "withdraw" and op["state"] == "queued" and op["to"] == view["address"]
    account = api(alice).get("/api/account/").json()
    assert account["available"] == 6_000
    assert [p["state"] for p in account["chain"]["pending_ops"]] == ["queued"]  # the pending state is shown
    outbox.flush()
    status, view = post(alice, "/api/account/stake/", {"amount": 4_000})
    assert status == 200 and view["stake"] == 4_000 and view["can_take_work"] is True and view["stake_fresh"]
    assert view["pending_ops"] == []
    status, view = post(alice, "/api/account/unbond/", {"amount": 3_500})
    assert status == 200 and (view["stake"], view["unbonding"]) == (500, 3_500) and view["can_take_work"] is False
    status, error = post(alice, "/api/account/unbonded/withdraw/", {})
    assert status == 409 and error["code"] == "chain_reverted" and "UnbondingNotOver" in str(error["message"])
    status, error = post(alice, "/api/account/unbond/", {"amount": 100})
    assert status == 409 and "UnbondingInProgress" in str(error["message"])
    assert books.balance(alice, Account.Kind.USER_AVAILABLE) == 6_000


def test_a_deposit_from_the_dev_wallet_is_credited(chain_node: AnvilNode, make_user: MakeUser, books: Books) -> None:
    bob = make_user("bob", funds=3_000)
    post(bob, "/api/account/wallet/", {"dev": True})
    post(bob, "/api/account/withdraw/", {"amount": 3_000})
    outbox.flush()
    assert books.balance(bob, Account.Kind.USER_AVAILABLE) == 0
    status, body = post(bob, "/api/account/deposit/", {"amount": 1_200})
    assert status == 200 and body["credited"] == 1 and str(body["tx_hash"]).startswith("0x")
    assert books.balance(bob, Account.Kind.USER_AVAILABLE) == 1_200
    assert api(bob).get("/api/account/chain/").json()["wallet_balance"] == 1_800  # what the wallet kept, on chain
    client = Client()
    client.force_login(bob)
    page = client.get("/account/")
    assert (
        b'id="chain-balance" title="The market tokens your wallet holds on chain, read from the node as this page'
        in (page.content)
    )
    assert b'data-value="1800">1800</dd>' in page.content


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/api/account/withdraw/", {"amount": -5}, "invalid_input"),
        ("/api/account/withdraw/", {"amount": "lots"}, "invalid_input"),
        ("/api/account/withdraw/", {"amount": 10, "to": "0x1234"}, "invalid_input"),
        ("/api/account/withdraw/", {"amount": 10**30}, "invalid_input"),
        ("/api/account/withdraw/", {"amount": 5_001}, "insufficient_funds"),
        ("/api/account/stake/", {"amount": 0}, "invalid_input"),
        ("/api/account/stake/", {"amount": 10}, "no_dev_wallet"),
        ("/api/account/wallet/", {"address": "0x" + "11" * 20, "signature": "0xdead"}, "invalid_input"),
        ("/api/account/wallet/", ["dev"], "invalid_input"),
    ],
)
def test_bad_requests_get_a_clear_error_and_change_nothing(
    chain_node: AnvilNode, make_user: MakeUser, books: Books, path: str, body: object, code: str
) -> None:
    carol = make_user("carol", funds=5_000)
    if "withdraw" in path:
        post(carol, "/api/account/wallet/", {"dev": True})
    before = books.state()
    status, error = post(carol, path, body)
    assert 400 <= status < 500 and error["code"] == code, error
    assert books.state() == before


def test_a_linked_wallet_is_proven_by_its_signature(chain_node: AnvilNode, make_user: MakeUser) -> None:
    from eth_account import Account as EthAccount
    from eth_account.messages import encode_defunct

    from ledger.services.chain import link_message

    dave, erin = make_user("dave"), make_user("erin")
    key = EthAccount.create()
    signature = key.sign_message(encode_defunct(text=link_message(user=dave, address=key.address))).signature.hex()
    # Erin cannot link Dave's address with Dave's signature (the message names the account).
    status, _ = post(erin, "/api/account/wallet/", {"address": key.address, "signature": signature})
    assert status == 400
    status, view = post(dave, "/api/account/wallet/", {"address": key.address, "signature": signature})
    assert status == 201 and view["address"] == key.address and view["dev_wallet"] is False


def test_with_the_chain_down_actions_answer_503_and_the_account_still_answers(
    chain_node: AnvilNode, make_user: MakeUser
) -> None:
    frank = make_user("frank", funds=2_000)
    post(frank, "/api/account/wallet/", {"dev": True})
    chain_node.stop()
    status, error = post(frank, "/api/account/stake/", {"amount": 10})
    assert status == 503 and error["code"] == "chain_unavailable"
    status, op = post(frank, "/api/account/withdraw/", {"amount": 500})  # queued: the chain pays it when it is back
    assert status == 202 and op["state"] == "queued"
    account = api(frank).get("/api/account/")
    assert account.status_code == 200 and account.json()["chain"]["pending_ops"][0]["amount"] == 500
    assert api(frank).get("/api/account/chain/").json()["wallet_balance"] is None  # unreadable, and it says so


def test_the_chain_api_needs_a_signed_in_user(chain_node: AnvilNode) -> None:
    for path in ("/api/account/chain/",):
        assert api().get(path).status_code in (401, 403)
    for path in ("/api/account/wallet/", "/api/account/stake/", "/api/account/withdraw/", "/api/account/deposit/"):
        assert api().post(path, {}, format="json").status_code in (401, 403)
