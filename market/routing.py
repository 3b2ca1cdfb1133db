"""WebSocket URL patterns of this app, collected by config/asgi.py."""

from __future__ import annotations

from django.urls import URLPattern, path

from market.consumers import JobConsumer, MarketConsumer

websocket_urlpatterns: list[URLPattern] = [
    path("ws/jobs/<int:job_id>/", JobConsumer.as_asgi()),
    path("ws/market/", MarketConsumer.as_asgi()),
]
