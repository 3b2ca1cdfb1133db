"""Routes of the marketplace's pages (market/pages/)."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from market.pages import account, auth, buyer, dashboard

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("buy/", buyer.buyer_console, name="buy"),
    path("buy/jobs/<int:job_id>/", buyer.buyer_job, name="buy-job"),
    path("account/", account.account_page, name="account"),
    path("signin/", auth.SignInView.as_view(), name="sign-in"),
    path("signup/", auth.sign_up, name="sign-up"),
    path("signout/", auth_views.LogoutView.as_view(next_page="sign-in"), name="sign-out"),
]
