"""The market's REST API. Buyers: post bids (jobs), list, read and cancel them, read a settled job's cost, read
their balances. Providers: their capacity and asks, their earnings. Everyone signed in: models, providers online,
auction rounds. Anyone: the market's overview (the dashboard's figures). Views stay thin: one service or selector
each."""

from __future__ import annotations

import dataclasses

from django.conf import settings
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import Conflict, InvalidInput
from config.schema import errors
from ledger import selectors as ledger_selectors
from ledger.chain import selectors as chain_selectors
from market import filters, model_files, overview, quotes, selectors, services
from market.models import AuctionRound, Job, LanguageModel, Provider
from market.serializers import (
    AuctionRoundSerializer,
    BalancesSerializer,
    JobCreateSerializer,
    JobSerializer,
    ModelSerializer,
    PendingReleaseSerializer,
    ProviderSerializer,
)
from market.services.jobs import check_prompt_size


class ModelListApi(generics.ListAPIView):  # type: ignore[misc]  # DRF ships no type hints
    """Models that can be bought, with their shards."""

    serializer_class = ModelSerializer

    def get_queryset(self) -> QuerySet[LanguageModel]:
        return selectors.models_listed()


class ProviderListApi(generics.ListAPIView):  # type: ignore[misc]  # DRF ships no type hints
    """Providers online now, fastest first: the capacity the market can place shards on."""

    serializer_class = ProviderSerializer

    def get_queryset(self) -> QuerySet[Provider]:
        return selectors.providers_online_by_benchmark()


class JobListCreateApi(APIView):  # type: ignore[misc]  # DRF ships no type hints
    @extend_schema(
        parameters=[
            OpenApiParameter("state", str, enum=Job.State.values, description="e.g. queued: your open bids"),
            OpenApiParameter("model", str, description="a model's name (any quant)"),
            OpenApiParameter("since", OpenApiTypes.DATE, description="created on or after this day (UTC)"),
            OpenApiParameter("until", OpenApiTypes.DATE, description="created on or before this day (UTC)"),
        ],
        responses=JobSerializer(many=True),
        summary="Your jobs, newest first",
    )
    def get(self, request: Request) -> Response:
        found, problems = filters.job_filters(request.query_params)
        if problems:
            raise InvalidInput("; ".join(problems), code="bad_filter")
        jobs = selectors.jobs_of_buyer(buyer=request.user, **found)
        return Response(JobSerializer(jobs, many=True).data)

    @extend_schema(
        request=JobCreateSerializer,
        responses={201: JobSerializer, **errors(402, 404)},
        summary="Post a bid: a job with its maximum price, escrowed at once (402 when your balance is short)",
    )
    def post(self, request: Request) -> Response:
        serializer = JobCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        model = selectors.model_available(name=data["model"], quant=data.get("quant"))
        job = services.job_create(
            buyer=request.user,
            model=model,
            messages=data["messages"],
            max_new_tokens=data["max_new_tokens"],
            temperature=data["temperature"],
            top_p=data["top_p"],
            seed=data["seed"],
            max_price=data["max_price"],
            expires_in_seconds=data["expires_in_seconds"],
        )
        return Response(JobSerializer(job).data, status=status.HTTP_201_CREATED)


class JobDetailApi(APIView):  # type: ignore[misc]  # DRF ships no type hints
    @extend_schema(responses=JobSerializer, summary="One of your jobs (another buyer's is 404)")
    def get(self, request: Request, job_id: int) -> Response:
        return Response(JobSerializer(selectors.job_for_buyer(buyer=request.user, job_id=job_id)).data)


class JobCancelApi(APIView):  # type: ignore[misc]  # DRF ships no type hints
    @extend_schema(
        request=None,
        responses={200: JobSerializer, **errors(409)},
        summary="Cancel a bid (refunded) or a running job",
    )
    def post(self, request: Request, job_id: int) -> Response:
        job = services.job_cancel(job=selectors.job_for_buyer(buyer=request.user, job_id=job_id))
        return Response(JobSerializer(job).data)


class JobCostApi(APIView):  # type: ignore[misc]  # DRF ships no type hints
    @extend_schema(
        responses={200: OpenApiTypes.OBJECT, **errors(409)},
        summary="A settled job's cost: each placement's layer-tokens, price, payment and fee, and the refund",
    )
    def get(self, request: Request, job_id: int) -> Response:
        job = selectors.job_for_buyer(buyer=request.user, job_id=job_id)
        if job.settled_at is None:
            raise Conflict(f"job {job.pk} is {job.state} and not settled yet", code="not_settled")
        return Response({"job": job.pk, "state": job.state, "settled_at": job.settled_at, **job.cost})


class AccountApi(APIView):  # type: ignore[misc]  # DRF ships no type hints
    @extend_schema(responses=BalancesSerializer, summary="Your balances, in base units")
    def get(self, request: Request) -> Response:
        balances = BalancesSerializer(ledger_selectors.balances_of(user=request.user)).data
        return Response({**balances, "chain": chain_selectors.stake_view(user=request.user)})


class QuoteApi(APIView):  # type: ignore[misc]  # DRF ships no type hints
    @extend_schema(
        parameters=[
            OpenApiParameter("model", str, required=True),
            OpenApiParameter("quant", str),
            OpenApiParameter("prompt", str, description="the user message (or give prompt_tokens)"),
            OpenApiParameter("prompt_tokens", int),
            OpenApiParameter("max_new_tokens", int, description="default 64"),
        ],
        responses={200: OpenApiTypes.OBJECT, **errors(404, 409)},
        summary="The price at which a bid would clear now: the cheapest free pipeline's asks, and a bid with margin",
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        model = selectors.model_available(name=str(params.get("model", "")), quant=params.get("quant"))
        max_new_tokens = _int_param(params.get("max_new_tokens", "64"), "max_new_tokens", 1, 4096)
        if "prompt" in params:
            messages = [{"role": "user", "content": params["prompt"]}]
            check_prompt_size(model=model, messages=messages, max_new_tokens=max_new_tokens)
            prompt_tokens = len(model_files.model_tokenizer(model).encode_chat(messages))
        else:
            prompt_tokens = _int_param(params.get("prompt_tokens", ""), "prompt_tokens", 1, 1_000_000)
        tokens = prompt_tokens + max_new_tokens
        try:
            quote = quotes.cheapest_pipeline(model=model)
        except quotes.NoPipeline as exc:
            raise Conflict(str(exc), code="no_capacity") from None
        return Response(
            {
                "model": model.name,
                "quant": model.quant,
                "tokens": tokens,
                "price": quote.price(tokens),
                "bid": quote.bid(tokens),
                "margin_bps": settings.QUOTE_MARGIN_BPS,
                "per_token": quote.per_token,
                "ms_per_token": round(quote.ms_per_token, 3),
                "pipeline": [dataclasses.asdict(line) for line in quote.lines],
            }
        )


def _int_param(raw: object, name: str, low: int, high: int) -> int:
    try:
        value = int(str(raw))
    except ValueError:
        raise InvalidInput(f"{name} must be an integer between {low} and {high}") from None
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be an integer between {low} and {high}")
    return value


class JobProofApi(APIView):  # type: ignore[misc]  # DRF ships no type hints
    @extend_schema(
        responses={200: OpenApiTypes.OBJECT, **errors(409)},
        summary="A settled job's settlement leaf, its Merkle proof and the anchor transaction, to check on chain",
    )
    def get(self, request: Request, job_id: int) -> Response:
        job = selectors.job_for_buyer(buyer=request.user, job_id=job_id)
        proof = chain_selectors.settlement_proof(job_ref=selectors.job_ref(job.pk))
        if proof is None:
            raise Conflict(
                f"job {job.pk}'s settlement is not in an anchored batch yet (batches every few seconds)",
                code="not_anchored",
            )
        return Response(proof)


class MyCapacityApi(generics.ListAPIView):  # type: ignore[misc]  # DRF ships no type hints
    """Your provider agents, online or not: the capacity each announced, its benchmark and the ask it gets."""

    serializer_class = ProviderSerializer

    def get_queryset(self) -> QuerySet[Provider]:
        return selectors.providers_of_user(user=self.request.user)


class MyAskApi(APIView):  # type: ignore[misc]  # DRF ships no type hints
    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses=ProviderSerializer,
        summary="Post your provider's own ask per layer-token (null: the platform's figure)",
    )
    def patch(self, request: Request, provider_id: int) -> Response:
        if not isinstance(request.data, dict) or "ask" not in request.data:
            raise InvalidInput('send {"ask": <base units per layer-token>} or {"ask": null}')
        provider = services.provider_post_ask(user=request.user, provider_id=provider_id, ask=request.data["ask"])
        return Response(ProviderSerializer(provider).data)


class MyEarningsApi(APIView):  # type: ignore[misc]  # DRF ships no type hints
    @extend_schema(
        responses=OpenApiTypes.OBJECT,
        summary="What you earned by providing: pending (inside the challenge window), released, per job, and per "
        "day of settlement over 30 days (series: [{day: Unix seconds, amount}], 0 on days without)",
    )
    def get(self, request: Request) -> Response:
        balances = ledger_selectors.balances_of(user=request.user)
        rows = selectors.provider_releases(provider=request.user)
        return Response(
            {
                "pending": balances.pending,
                "earnings": balances.earnings,
                "settlements": PendingReleaseSerializer(rows, many=True).data,
                "series": selectors.provider_earnings_series(provider=request.user),
            }
        )


class AuctionRoundListApi(generics.ListAPIView):  # type: ignore[misc]  # DRF ships no type hints
    """The latest auction rounds (50): solver, time, welfare, optimality gap, counts and every trade's price."""

    serializer_class = AuctionRoundSerializer

    def get_queryset(self) -> QuerySet[AuctionRound]:
        return selectors.auction_rounds_latest()


class MarketOverviewApi(APIView):  # type: ignore[misc]  # DRF ships no type hints
    """The market dashboard's figures (market.overview): public, like the page at /, and aggregates only."""

    permission_classes = [AllowAny]

    @extend_schema(
        responses=OpenApiTypes.OBJECT,
        summary="The market now: providers online by backend, free slots, the book, tokens per second served, "
        "audits and verdicts, and the latest rounds with their clearing prices",
    )
    def get(self, request: Request) -> Response:
        return Response(overview.market_overview())
