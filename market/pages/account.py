"""The account page (/account/): balances and API tokens."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


@login_required
def account_page(request: HttpRequest) -> HttpResponse:
    return render(request, "market/account.html", {"nav": "account"})
