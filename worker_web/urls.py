"""HTTP routes of the provider side."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from worker_web import views

urlpatterns = [
    path("shards/<str:sha256>/", views.ShardDownloadApi.as_view(), name="shard-download"),
    path("provide/", views.provider_page, name="provide"),
    path("provide/login/", views.ProviderLoginView.as_view(), name="provider-login"),
    path("provide/logout/", auth_views.LogoutView.as_view(next_page="provider-login"), name="provider-logout"),
]
