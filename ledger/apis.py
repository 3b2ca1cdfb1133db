"""The ledger's chain API for signed-in users: wallet, stake, unbond, deposit and withdraw (dev chain actions signed
by the market's dev wallets; a linked wallet signs its own). Thin: one service each; errors are the project's."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import InvalidInput
from config.schema import errors
from ledger.chain import selectors as chain_selectors
from ledger.chain.models import ChainOp
from ledger.services import chain as chain_services


def _body(request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise InvalidInput("the body must be a JSON object")
    return dict(request.data)


def _view(request: Request, code: int = status.HTTP_200_OK) -> Response:
    return Response(chain_selectors.stake_view(user=request.user), status=code)


class ChainAccountApi(APIView):  # type: ignore[misc]  # DRF ships no type hints
    @extend_schema(
        responses={200: OpenApiTypes.OBJECT, **errors(502, 503)},
        summary="Your wallet and its token balance on chain (null: none, or unreadable), stake, unbonding, slashed, "
        "pending chain ops",
    )
    def get(self, request: Request) -> Response:
        view = chain_selectors.stake_view(user=request.user)
        return Response({**view, "wallet_balance": chain_selectors.wallet_balance(user=request.user)})


class WalletApi(APIView):  # type: ignore[misc]
    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses={201: OpenApiTypes.OBJECT, **errors(400, 402, 409, 502, 503)},
        summary='Get a dev wallet ({"dev": true}, dev chain only) or link yours ({"address", "signature"})',
    )
    def post(self, request: Request) -> Response:
        body = _body(request)
        if body.get("dev") is True:
            chain_services.wallet_dev_create(user=request.user)
        elif "address" in body:
            chain_services.wallet_link(user=request.user, address=body["address"], signature=str(body.get("signature")))
        else:
            raise InvalidInput('send {"dev": true} or {"address": ..., "signature": ...}')
        return _view(request, status.HTTP_201_CREATED)


class StakeApi(APIView):  # type: ignore[misc]
    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses={200: OpenApiTypes.OBJECT, **errors(400, 402, 409, 502, 503)},
        summary="Stake from your dev wallet",
    )
    def post(self, request: Request) -> Response:
        chain_services.stake_dev(user=request.user, amount=_body(request).get("amount"))  # type: ignore[arg-type]
        return _view(request)


class UnbondApi(APIView):  # type: ignore[misc]
    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses={200: OpenApiTypes.OBJECT, **errors(400, 402, 409, 502, 503)},
        summary="Start unbonding stake",
    )
    def post(self, request: Request) -> Response:
        chain_services.unbond_dev(user=request.user, amount=_body(request).get("amount"))  # type: ignore[arg-type]
        return _view(request)


class UnbondedWithdrawApi(APIView):  # type: ignore[misc]
    @extend_schema(
        request=None,
        responses={200: OpenApiTypes.OBJECT, **errors(400, 402, 409, 502, 503)},
        summary="Withdraw unbonded stake to your wallet after the period",
    )
    def post(self, request: Request) -> Response:
        chain_services.unbonded_withdraw_dev(user=request.user)
        return _view(request)


class DepositApi(APIView):  # type: ignore[misc]
    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses={200: OpenApiTypes.OBJECT, **errors(400, 402, 409, 502, 503)},
        summary="Deposit from your dev wallet to the ledger",
    )
    def post(self, request: Request) -> Response:
        tx_hash = chain_services.deposit_dev(user=request.user, amount=_body(request).get("amount"))  # type: ignore[arg-type]
        credited = chain_services.deposits_watch()  # mined already on the dev chain: credit it now
        return Response({"tx_hash": tx_hash, "credited": credited, **chain_selectors.stake_view(user=request.user)})


class WithdrawApi(APIView):  # type: ignore[misc]
    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses={202: OpenApiTypes.OBJECT, **errors(400, 402, 409, 502, 503)},
        summary="Withdraw from the ledger to an address (default: your wallet); paid once by the chain's outbox",
    )
    def post(self, request: Request) -> Response:
        body = _body(request)
        to = body.get("to") or chain_selectors.stake_view(user=request.user)["address"]
        if not to:
            raise InvalidInput("name an address to withdraw to (`to`), or get a wallet first")
        key = body.get("key")
        op = chain_services.withdrawal_request(
            user=request.user,
            amount=body.get("amount"),  # type: ignore[arg-type]
            to=to,
            key=str(key) if key is not None else None,
        )
        return Response(chain_selectors.op_view(ChainOp.objects.get(pk=op.pk)), status=status.HTTP_202_ACCEPTED)
