"""HTTP routes of the provider side."""

from __future__ import annotations

from django.urls import path

from worker_web import views

urlpatterns = [
    path("shards/<str:sha256>/", views.ShardDownloadApi.as_view(), name="shard-download"),
]
