"""HTTP routes of verification under /api/."""

from __future__ import annotations

from django.urls import path

from verification import apis

urlpatterns = [
    path("jobs/<int:job_id>/challenge/", apis.JobChallengeApi.as_view(), name="api-job-challenge"),
    path("jobs/<int:job_id>/verification/", apis.JobVerificationApi.as_view(), name="api-job-verification"),
    path("provider/audits/", apis.MyAuditsApi.as_view(), name="api-provider-audits"),
]
