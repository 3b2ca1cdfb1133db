"""WebSocket URL patterns of this app, collected by config/asgi.py."""

from __future__ import annotations

from django.urls import URLPattern, path

from worker_web.consumers import ProviderConsumer

websocket_urlpatterns: list[URLPattern] = [path("ws/provider/", ProviderConsumer.as_asgi())]
