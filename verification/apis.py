"""Verification's REST API: a buyer challenges its job and reads its verification state; a provider reads its
audits and verdicts. Views stay thin: one service or selector each."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.schema import errors
from verification import selectors
from verification.services import disputes


class JobChallengeApi(APIView):  # type: ignore[misc]  # DRF ships no type hints
    @extend_schema(
        request=None,
        responses={201: OpenApiTypes.OBJECT, **errors(402, 409)},
        summary="Challenge your finished job within its window, with the bond (402 short, 409 late or twice)",
    )
    def post(self, request: Request, job_id: int) -> Response:
        dispute = disputes.challenge_open(user=request.user, job_id=job_id)
        return Response(selectors.job_verification(dispute.job), status=status.HTTP_201_CREATED)


class JobVerificationApi(APIView):  # type: ignore[misc]  # DRF ships no type hints
    @extend_schema(responses=OpenApiTypes.OBJECT, summary="Your job's verification: window, audits, challenges")
    def get(self, request: Request, job_id: int) -> Response:
        return Response(selectors.job_verification_for_buyer(buyer=request.user, job_id=job_id))


class MyAuditsApi(APIView):  # type: ignore[misc]  # DRF ships no type hints
    @extend_schema(responses=OpenApiTypes.OBJECT, summary="Your providers' audits passed and failed, and verdicts")
    def get(self, request: Request) -> Response:
        return Response(selectors.provider_audits(user=request.user))
