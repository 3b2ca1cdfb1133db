"""manage.py issue_token: print the API token of a user (creating the user with --create; a new user gets the
signup grant unless CONTRIBUTE_TO_USE is on)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from market import services


class Command(BaseCommand):
    help = (
        "Print a user's API token for the REST API and the provider WebSocket (--create makes the user, "
        "--password sets a password for signing in to the provider tab)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--create", action="store_true", help="Create the user if it does not exist.")
        parser.add_argument("--password", help="Also set the user's password (to sign in to the provider tab).")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["username"]
        if not options["create"] and not User.objects.filter(username=name).exists():
            raise CommandError(f"no user {name!r}; add --create to make one")
        user, token = services.account_open(username=name)
        if options["password"]:
            user.set_password(options["password"])
            user.save(update_fields=["password"])
        self.stdout.write(token)
