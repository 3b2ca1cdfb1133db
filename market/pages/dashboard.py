"""The market dashboard (/)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "market/dashboard.html", {"nav": "dashboard"})
