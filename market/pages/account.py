"""The account page (/account/): balances (the ledger's and the chain's, as GET /api/account/ shows them) and API
tokens, made and revoked by plain POST forms (CSRF-checked). A new key is in the one response that made it, never
stored and never shown again: that response is not cached, and it is not a redirect (the key must not travel in a
URL or a session)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import add_never_cache_headers

from config.errors import InvalidInput, MarketError
from ledger import selectors as ledger_selectors
from ledger.chain import selectors as chain_selectors
from market import auth, services
from market.services.accounts import MAX_LIVE_TOKENS

DEFAULT = "default"  # the default token's id in the page's forms and its table row


@login_required
def account_page(request: HttpRequest) -> HttpResponse:
    user: User = request.user  # type: ignore[assignment]  # login_required: never anonymous here
    new_key: dict[str, str] | None = None
    error: str | None = None
    status = 200
    if request.method == "POST":
        try:
            new_key = _act(user, request.POST.get("action", ""), request.POST)
        except MarketError as failure:
            error, status = failure.message, failure.status
        else:
            if new_key is None:
                return redirect("account")  # after a revoke: a reload does not post it again
    response = render(request, "market/account.html", _context(user, new_key, error), status=status)
    add_never_cache_headers(response)
    return response


def _act(user: User, action: str, form: Any) -> dict[str, str] | None:
    """Do what the form asks; the new token's name and key when it made one."""
    if action == "create":
        token, key = services.api_token_create(user=user, name=str(form.get("name", "")))
        return {"name": token.name, "key": key}
    if action == "default-create":
        return {"name": DEFAULT, "key": services.default_token_create(user=user)}
    if action == "revoke":
        which = str(form.get("token", ""))
        if which == DEFAULT:
            services.default_token_revoke(user=user)
        elif which.isdigit():
            services.api_token_revoke(user=user, token_id=int(which))
        else:
            raise InvalidInput("name the token to revoke", code="token_not_found")
        return None
    raise InvalidInput(f"unknown action {action!r}")


def _context(user: User, new_key: dict[str, str] | None, error: str | None) -> dict[str, Any]:
    chain = chain_selectors.stake_view(user=user)
    return {
        "nav": "account",
        "balances": ledger_selectors.balances_of(user=user),
        "chain": chain,
        "wallet_balance": chain_selectors.wallet_balance(user=user),
        "default_token": auth.default_token_of_user(user=user),
        "tokens": auth.api_tokens_of_user(user=user),
        "max_tokens": MAX_LIVE_TOKENS,
        "new_key": new_key,
        "error": error,
    }
