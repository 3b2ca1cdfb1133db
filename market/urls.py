"""HTTP routes of the market: the buyer API under /api/."""

from __future__ import annotations

from django.urls import path

from market import apis

urlpatterns = [
    path("models/", apis.ModelListApi.as_view(), name="api-models"),
    path("providers/", apis.ProviderListApi.as_view(), name="api-providers"),
    path("jobs/", apis.JobListCreateApi.as_view(), name="api-jobs"),
    path("jobs/<int:job_id>/", apis.JobDetailApi.as_view(), name="api-job"),
    path("jobs/<int:job_id>/cancel/", apis.JobCancelApi.as_view(), name="api-job-cancel"),
]
