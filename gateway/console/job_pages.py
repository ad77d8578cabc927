"""A tenant's fine-tuning jobs: the list, one job's page with its evaluation, and the part of
that page polled while the job runs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request
from starlette.responses import HTMLResponse, Response

from core.states import TERMINAL_JOB_STATUSES
from trainer import job_records, jobs

from . import queries, views
from .access import Tenant, User
from .pages import console_router, render, services_of

router = console_router()

JOBS_PAGE = 50
EVENTS_SHOWN = 12


@router.get("/tenants/{tenant}/jobs")
def jobs_page(
    request: Request, user: User, owner: Tenant, after: Annotated[str | None, Query(max_length=64)] = None
) -> HTMLResponse:
    page, has_more = jobs.list_jobs(services_of(request).db, owner.id, after=after, limit=JOBS_PAGE)
    return render(request, "jobs.html", user, nav="jobs", tenant=owner, jobs=page, has_more=has_more)


def _live_context(job: jobs.JobInfo, events: list[job_records.EventInfo]) -> dict[str, Any]:
    return {
        "job": job,
        "progress": views.progress(job, events),
        "loss": views.loss_chart(events),
        "events": list(reversed(events))[:EVENTS_SHOWN],
        "event_count": len(events),
    }


@router.get("/tenants/{tenant}/jobs/{job_id}")
def job_page(request: Request, user: User, owner: Tenant, job_id: str) -> HTMLResponse:
    detail = queries.job_detail(services_of(request), owner.id, job_id)
    return render(
        request,
        "job.html",
        user,
        nav="jobs",
        tenant=owner,
        fragment=False,
        evaluation=views.evaluation_view(detail.evaluation) if detail.evaluation else None,
        examples=views.differing_examples(detail.report),
        distillation=views.distillation_view(detail.job),
        **_live_context(detail.job, detail.events),
    )


@router.get("/tenants/{tenant}/jobs/{job_id}/live")
def job_live(request: Request, user: User, owner: Tenant, job_id: str) -> Response:
    """The polled part of a job page; once the job has ended, the whole page reloads to show
    its evaluation (and polling stops, since the reloaded page does not poll)."""
    job, events = queries.job_live(services_of(request), owner.id, job_id)
    if job.status in TERMINAL_JOB_STATUSES and request.headers.get("hx-request"):
        return Response(status_code=200, headers={"HX-Refresh": "true"})
    return render(request, "_job_live.html", user, tenant=owner, fragment=True, **_live_context(job, events))
