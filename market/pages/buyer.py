"""The buyer console (/buy/): post a job at a live quote, and the history of one's jobs with filters; and one job's
page (/buy/jobs/<id>/): its stream, the pipeline that serves it, its cost once settled, cancel and challenge.

The pages render what the REST API's selectors and serializers give; the JS modules (buy.js, job.js) then talk to
the API and to /ws/jobs/<id>/ themselves."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from config.errors import NotFound
from market import filters as filters_module
from market import selectors
from market.models import Job
from market.serializers import JobSerializer
from verification import selectors as verification_selectors


@login_required
def buyer_console(request: HttpRequest) -> HttpResponse:
    buyer: User = request.user  # type: ignore[assignment]  # login_required: never anonymous here
    filters, problems = filters_module.job_filters(request.GET)
    models = list(selectors.models_listed())
    context = {
        "nav": "buy",
        "models": models,
        "model_names": sorted({m.name for m in models}),
        "states": Job.State.choices,
        "jobs": selectors.jobs_of_buyer(buyer=buyer, **filters),
        "filtering": bool(filters),
        "chosen": {key: request.GET.get(key, "") for key in ("state", "model", "since", "until")},
        "filter_error": "; ".join(problems),
        "config": {
            "quote": reverse("api-quote"),
            "jobs": reverse("api-jobs"),
            "jobPage": reverse("buy-job", kwargs={"job_id": 0}),
        },
    }
    return render(request, "market/buy.html", context, status=400 if problems else 200)


@login_required
def buyer_job(request: HttpRequest, job_id: int) -> HttpResponse:
    buyer: User = request.user  # type: ignore[assignment]  # login_required: never anonymous here
    try:
        job = selectors.job_for_buyer(buyer=buyer, job_id=job_id)
    except NotFound:  # another buyer's job reads exactly like one that does not exist
        raise Http404(f"job {job_id} not found") from None
    checks = verification_selectors.job_verification(job)
    verification = verification_selectors.jsonable(checks)
    data = JobSerializer(job).data
    context = {
        "nav": "buy",
        "job": job,
        "prompt": job.messages,
        "hops": pipeline_hops(data["pipeline"], job.timings),
        "reason": job.error if job.state == Job.State.QUEUED else "",
        "ended": job.state in Job.FINAL_STATES,
        "verification": verification,
        "window_closes_at": checks["challenge_window_closes_at"],
        "page": {
            "job": data,
            "verification": verification,
            "states": dict(Job.State.choices),
            "urls": {
                "job": reverse("api-job", kwargs={"job_id": job.pk}),
                "cost": reverse("api-job-cost", kwargs={"job_id": job.pk}),
                "cancel": reverse("api-job-cancel", kwargs={"job_id": job.pk}),
                "challenge": reverse("api-job-challenge", kwargs={"job_id": job.pk}),
                "stream": f"/ws/jobs/{job.pk}/?follow=verification",
            },
        },
    }
    return render(request, "market/job.html", context)


def pipeline_hops(pipeline: list[dict[str, Any]], timings: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's pipeline as the page draws it: one entry per hop (its shard and layers, and the median time of its
    steps, in ms, once the job ended: the orchestrator's `hop_round_trip_ms_median`), with every placement that
    served it in order (one that was replaced is followed by its replacement). job.js draws the same from the API's
    job (`drawPipeline`)."""
    medians = timings.get("hop_round_trip_ms_median") or []
    hops: dict[int, dict[str, Any]] = {}
    for entry in pipeline:
        index = int(entry["hop"])
        shard = str(entry.get("shard", ""))
        hop = hops.setdefault(
            index,
            {
                "hop": index,
                "shard": shard,
                "layers": shard.rpartition(":")[2],
                "ms_median": medians[index] if index < len(medians) else None,
                "placements": [],
            },
        )
        # A placement that ended before the job did (its provider failed, or its server died) was replaced.
        replaced = bool(entry.get("ended")) and entry["ended"] not in Job.FINAL_STATES
        hop["placements"].append({**entry, "replaced": replaced})
    return [hops[index] for index in sorted(hops)]
