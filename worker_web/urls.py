"""HTTP routes of the provider side."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from market.pages.auth import SignInView
from worker_web import views

urlpatterns = [
    path("shards/<str:sha256>/", views.ShardDownloadApi.as_view(), name="shard-download"),
    path("provide/", views.provider_page, name="provide"),
    path("api/provider/console/", views.ProviderConsoleApi.as_view(), name="api-provider-console"),
    # The provider tab's own sign-in address, kept for links people saved: the market's sign-in, back to the tab.
    path("provide/login/", SignInView.as_view(next_page="provide"), name="provider-login"),
    path("provide/logout/", auth_views.LogoutView.as_view(next_page="provider-login"), name="provider-logout"),
]
