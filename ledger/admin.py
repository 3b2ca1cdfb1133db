"""Read-only admin for the ledger: the operator can look at every account and transaction and change none.

Balances change only through ledger.services (tokens are minted with `manage.py grant_tokens`).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from ledger.models import Account, Entry, PendingRelease, Transaction


class ReadOnlyMixin:
    """No add, change or delete: the ledger is append-only and written by its services alone."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EntryInline(ReadOnlyMixin, admin.TabularInline[Entry, Transaction]):
    model = Entry
    extra = 0
    fields = ("account", "amount")
    readonly_fields = ("account", "amount")


@admin.register(Account)
class AccountAdmin(ReadOnlyMixin, admin.ModelAdmin[Account]):
    list_display = ["pk", "owner", "kind", "balance", "created_at"]
    list_filter = ["kind"]
    search_fields = ["owner__username"]
    list_select_related = ["owner"]


@admin.register(Transaction)
class TransactionAdmin(ReadOnlyMixin, admin.ModelAdmin[Transaction]):
    list_display = ["pk", "kind", "idempotency_key", "job_ref", "memo", "created_at"]
    list_filter = ["kind"]
    search_fields = ["idempotency_key", "job_ref"]
    date_hierarchy = "created_at"
    inlines = [EntryInline]


@admin.register(PendingRelease)
class PendingReleaseAdmin(ReadOnlyMixin, admin.ModelAdmin[PendingRelease]):
    list_display = ["pk", "provider", "job_ref", "amount", "release_after", "on_hold", "released_at"]
    list_filter = ["on_hold", "released_at"]
    search_fields = ["job_ref", "provider__username"]
    list_select_related = ["provider"]
