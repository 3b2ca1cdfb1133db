"""manage.py provide: run a headless provider that lends this machine's CPU to a market server."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from worker_web.agent.provider import AuthRefused, ProviderAgent


class Command(BaseCommand):
    help = "Serve shards to a market server over its WebSocket: benchmark, load shards, run steps, reconnect."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--server", required=True, help="The market's base URL, e.g. http://127.0.0.1:8000")
        parser.add_argument(
            "--token",
            default=os.environ.get("PROVIDER_TOKEN"),
            help="API token of the providing account (or PROVIDER_TOKEN); manage.py issue_token",
        )
        parser.add_argument("--slots", type=int, default=2, help="Shard sessions served at once (1-64).")
        parser.add_argument(
            "--cache-dir",
            type=Path,
            default=Path(settings.VAR_DIR) / "provider-cache",
            help="Where downloaded shards are kept, by SHA-256.",
        )
        parser.add_argument("--name", help="How this provider is listed; default: host name and cache folder.")
        parser.add_argument("--memory-mb", type=int, default=2048, help="Memory offered for shards, MB.")
        parser.add_argument(
            "--ask",
            type=int,
            help="Your own ask, base units per layer-token (default: the platform's figure from your measured "
            "speed, which is also the lowest ask it accepts).",
        )

        parser.add_argument(
            "--no-commitments",
            action="store_true",
            help="Send no commitments of the layers' states (only to measure their cost: a provider that does not "
            "commit loses every audit and challenge of its work).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["token"]:
            raise CommandError("give --token (or PROVIDER_TOKEN); manage.py issue_token <user> prints one")
        if not 1 <= options["slots"] <= 64:
            raise CommandError("--slots must be between 1 and 64")
        if options["ask"] is not None and not 1 <= options["ask"] <= 10**9:
            raise CommandError("--ask must be between 1 and 10^9 base units per layer-token")
        cache_dir = options["cache_dir"].resolve()
        tag = hashlib.sha1(str(cache_dir).encode()).hexdigest()[:6]
        logging.basicConfig(level=logging.INFO, format="%(asctime)s provider %(message)s", force=True)
        agent = ProviderAgent(
            server=options["server"],
            token=options["token"],
            slots=options["slots"],
            cache_dir=cache_dir,
            name=options["name"] or f"{socket.gethostname()}-{tag}",
            memory_bytes=options["memory_mb"] << 20,
            ask=options["ask"],
            commitments=not options["no_commitments"],
        )
        try:
            asyncio.run(agent.run_forever())
        except AuthRefused as exc:
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            self.stdout.write("stopped")
