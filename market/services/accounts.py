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


def account_sign_up(*, username: str, password: str) -> User:
    """A new user who signed up on the site: its password, its API token and the signup grant, all or nothing."""
    with transaction.atomic():
        user = User.objects.create_user(username=username, password=password)
        ledger_services.grant_signup_bonus(user=user)
        Token.objects.create(user=user)
    return user
