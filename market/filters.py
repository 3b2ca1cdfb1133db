"""Parsing the filters of a buyer's job history, shared by the buyer console and the REST API."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from typing import Any

from django.utils import timezone

from market.models import Job


def job_filters(query: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """A buyer's filters of their job history, from a query string (the buyer console's GET form and GET /api/jobs/
    alike), for `selectors.jobs_of_buyer`: state, model (by name), and a range of days (`since` and `until`, both
    included, YYYY-MM-DD in UTC). Values that do not parse are named in the problems and left out (an empty value
    means no filter)."""
    filters: dict[str, Any] = {}
    problems: list[str] = []
    if state := query.get("state", ""):
        if state in Job.State.values:
            filters["state"] = state
        else:
            problems.append(f"state must be one of {', '.join(Job.State.values)}")
    if model := query.get("model", "").strip():
        filters["model"] = model
    for key, field, shift in (("since", "since", 0), ("until", "before", 1)):
        if raw := query.get(key, "").strip():
            try:
                day = date.fromisoformat(raw) + timedelta(days=shift)
            except (ValueError, OverflowError):
                problems.append(f"{key} must be a date (YYYY-MM-DD)")
                continue
            filters[field] = timezone.make_aware(datetime.combine(day, time.min))
    return filters, problems
