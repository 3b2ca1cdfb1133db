"""Operator / development: mint tokens to a user's available balance."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.errors import MarketError
from ledger import selectors, services


class Command(BaseCommand):
    help = (
        "Mint AMOUNT base units to USERNAME's available balance. Shell access is the operator's authority; "
        "with --key, running the command again with the same key grants nothing more."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="user to credit")
        parser.add_argument("amount", type=int, help="base units to mint (a positive integer)")
        parser.add_argument("--create", action="store_true", help="create the user (no usable password) if missing")
        parser.add_argument("--key", help="idempotency key (default: a fresh one, so every run grants)")

    def handle(self, *args: Any, username: str, amount: int, create: bool, key: str | None, **options: Any) -> None:
        target = User.objects.filter(username=username).first()
        if target is None:
            if not create:
                raise CommandError(f"no user {username!r} (pass --create to create it)")
            target = User.objects.create_user(username=username)  # no password: set one with changepassword
            self.stdout.write(f"created user {username!r}")
        before = selectors.balances_of(user=target).available
        try:
            tx = services.mint_as_system(
                to_user=target, amount=amount, key=key or f"grant:{uuid.uuid4()}", memo="grant_tokens"
            )
        except MarketError as error:
            raise CommandError(error.message) from error
        balance = selectors.balances_of(user=target).available
        if balance == before:  # the key was used already: the mint replayed and changed nothing
            self.stdout.write(f"already granted under key {key!r} (transaction {tx.pk}); available {balance}")
            return
        message = f"granted {amount} base units to {username!r} (transaction {tx.pk}); available now {balance}"
        self.stdout.write(self.style.SUCCESS(message))
