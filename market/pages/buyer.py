"""The buyer console (/buy/) and one job's page (/buy/jobs/<id>/)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from market import selectors


@login_required
def buyer_console(request: HttpRequest) -> HttpResponse:
    return render(request, "market/buy.html", {"nav": "buy"})


@login_required
def buyer_job(request: HttpRequest, job_id: int) -> HttpResponse:
    job = selectors.job_for_buyer(buyer=request.user, job_id=job_id)  # type: ignore[arg-type]
    return render(request, "market/job.html", {"nav": "buy", "job": job})
