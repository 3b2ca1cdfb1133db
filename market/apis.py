"""The buyer REST API: create and read jobs, list models. Views stay thin: one service or selector each."""

from __future__ import annotations

from django.db.models import F, QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import NotFound
from market import selectors, services
from market.models import Job, LanguageModel, Provider
from market.serializers import JobCreateSerializer, JobSerializer, ModelSerializer, ProviderSerializer


class ModelListApi(generics.ListAPIView):  # type: ignore[misc]  # DRF ships no type hints
    """Models that can be bought, with their shards."""

    serializer_class = ModelSerializer
    queryset = LanguageModel.objects.prefetch_related("shards").order_by("name", "quant")


class ProviderListApi(generics.ListAPIView):  # type: ignore[misc]  # DRF ships no type hints
    """Providers online now, fastest first: the capacity the market can place shards on."""

    serializer_class = ProviderSerializer

    def get_queryset(self) -> QuerySet[Provider]:
        return selectors.providers_online().order_by(F("ns_per_layer_token").asc(nulls_last=True), "pk")


class JobListCreateApi(APIView):  # type: ignore[misc]  # DRF ships no type hints
    @extend_schema(responses=JobSerializer(many=True), summary="Your jobs, newest first")
    def get(self, request: Request) -> Response:
        jobs: QuerySet[Job] = Job.objects.filter(buyer=request.user).select_related("model")[:100]
        return Response(JobSerializer(jobs, many=True).data)

    @extend_schema(request=JobCreateSerializer, responses={201: JobSerializer}, summary="Submit a job")
    def post(self, request: Request) -> Response:
        serializer = JobCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        model = _model_named(data["model"], data.get("quant"))
        job = services.job_create(
            buyer=request.user,
            model=model,
            messages=data["messages"],
            max_new_tokens=data["max_new_tokens"],
            temperature=data["temperature"],
            top_p=data["top_p"],
            seed=data["seed"],
        )
        return Response(JobSerializer(job).data, status=status.HTTP_201_CREATED)


class JobDetailApi(APIView):  # type: ignore[misc]  # DRF ships no type hints
    @extend_schema(responses=JobSerializer, summary="One of your jobs (another buyer's is 404)")
    def get(self, request: Request, job_id: int) -> Response:
        return Response(JobSerializer(selectors.job_for_buyer(buyer=request.user, job_id=job_id)).data)


class JobCancelApi(APIView):  # type: ignore[misc]  # DRF ships no type hints
    @extend_schema(request=None, responses=JobSerializer, summary="Cancel a queued or running job")
    def post(self, request: Request, job_id: int) -> Response:
        job = services.job_cancel(job=selectors.job_for_buyer(buyer=request.user, job_id=job_id))
        return Response(JobSerializer(job).data)


def _model_named(name: str, quant: str | None) -> LanguageModel:
    models = LanguageModel.objects.filter(name=name)
    if quant is not None:
        models = models.filter(quant=quant)
    model = models.order_by("-pk").first()
    if model is None:
        raise NotFound(
            f"model {name}{f' ({quant})' if quant else ''} is not available; see /api/models/", code="unknown_model"
        )
    return model
