"""Opening a market account: the user, its API token, and the signup grant (unless CONTRIBUTE_TO_USE is on)."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction
from rest_framework.authtoken.models import Token

from ledger import services as ledger_services


def account_open(*, username: str) -> tuple[User, str]:
    """The user named so and its API token, creating both (with the signup grant) if the user is new."""
    with transaction.atomic():
        user, created = User.objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
            ledger_services.grant_signup_bonus(user=user)
        token, _ = Token.objects.get_or_create(user=user)
    return user, token.key
