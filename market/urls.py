"""HTTP routes of the market API under /api/."""

from __future__ import annotations

from django.urls import path

from market import apis

urlpatterns = [
    path("models/", apis.ModelListApi.as_view(), name="api-models"),
    path("providers/", apis.ProviderListApi.as_view(), name="api-providers"),
    path("jobs/", apis.JobListCreateApi.as_view(), name="api-jobs"),
    path("jobs/<int:job_id>/", apis.JobDetailApi.as_view(), name="api-job"),
    path("jobs/<int:job_id>/cancel/", apis.JobCancelApi.as_view(), name="api-job-cancel"),
    path("jobs/<int:job_id>/cost/", apis.JobCostApi.as_view(), name="api-job-cost"),
    path("jobs/<int:job_id>/proof/", apis.JobProofApi.as_view(), name="api-job-proof"),
    path("quote/", apis.QuoteApi.as_view(), name="api-quote"),
    path("account/", apis.AccountApi.as_view(), name="api-account"),
    path("provider/capacity/", apis.MyCapacityApi.as_view(), name="api-provider-capacity"),
    path("provider/capacity/<int:provider_id>/ask/", apis.MyAskApi.as_view(), name="api-provider-ask"),
    path("provider/earnings/", apis.MyEarningsApi.as_view(), name="api-provider-earnings"),
    path("market/", apis.MarketOverviewApi.as_view(), name="api-market"),
    path("auction/rounds/", apis.AuctionRoundListApi.as_view(), name="api-auction-rounds"),
]
