"""The market dashboard (/): open to anyone, like GET /api/market/ whose figures it shows (market.overview).

The first paint is server-rendered from `overview.market_overview()` (also handed to the page's script as JSON);
market/static/market/dashboard.js then follows /ws/market/ for each round and each change of the figures.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from market import overview


def dashboard(request: HttpRequest) -> HttpResponse:
    market = overview.market_overview()
    return render(
        request,
        "market/dashboard.html",
        {"nav": "dashboard", "market": market, "window_minutes": overview.TOKENS_WINDOW_SECONDS // 60},
    )
