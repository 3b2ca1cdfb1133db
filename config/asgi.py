"""ASGI entry point: HTTP goes to Django, WebSockets to the Channels consumers of the apps."""

from __future__ import annotations

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# Set up Django (apps registry, settings) before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

import market.routing  # noqa: E402
import worker_web.routing  # noqa: E402
from config.static import IsolatedStaticFilesHandler  # noqa: E402
from config.ws_auth import TokenAuthMiddleware  # noqa: E402
from market import clock, launch, scheduling  # noqa: E402
from transport import daphne_fast  # noqa: E402

daphne_fast.install()

websocket_urlpatterns = [*worker_web.routing.websocket_urlpatterns, *market.routing.websocket_urlpatterns]

router = ProtocolTypeRouter(
    {
        "http": IsolatedStaticFilesHandler(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(TokenAuthMiddleware(URLRouter(websocket_urlpatterns)))
        ),
    }
)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    # The embedded profile runs job runners and auction rounds on this server's event loop: note it, and start the
    # market's clock, on the first request of any kind.
    scheduling.serve_here(launch.launch_here)
    if settings.ORCHESTRATOR == "server":
        clock.start()
    await router(scope, receive, send)
