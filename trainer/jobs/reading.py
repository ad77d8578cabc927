"""Reading jobs: one (tenant-scoped) or the tenant's list."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.db import Database
from core.errors import bad_request, not_found
from core.metadata import has_pair
from core.models import Job
from core.pages import tenant_page
from trainer.jobs.info import JobInfo, job_info
from trainer.jobs.methods import MERGE


def owned_job(s: Any, tenant_id: str | None, job_id: str) -> Job:
    job = s.get(Job, job_id)
    # Same answer for unknown and foreign jobs: a tenant cannot probe others' job ids. A merge
    # is a job to the workers only (`tenant_id` None): a tenant reads it through trainer.merge.
    if job is None or (tenant_id is not None and (job.tenant_id != tenant_id or job.method == MERGE)):
        raise not_found(
            f"Fine-tuning job {job_id!r} not found.", code="fine_tuning_job_not_found", param="fine_tuning_job_id"
        )
    return job


def get_job(db: Database, tenant_id: str | None, job_id: str) -> JobInfo:
    """One job; `tenant_id` None (operators, the worker) skips the ownership check."""
    with db.session() as s:
        return job_info(owned_job(s, tenant_id, job_id))


def check_page_limit(limit: int) -> None:
    if not 1 <= limit <= 100:
        raise bad_request("limit must be between 1 and 100.", param="limit")


def list_jobs(
    db: Database,
    tenant_id: str,
    *,
    after: str | None = None,
    limit: int = 20,
    metadata: Mapping[str, str] | None = None,
    without_metadata: bool = False,
) -> tuple[list[JobInfo], bool]:
    """The tenant's jobs, newest first; `after` is the last job id of the previous page.
    `metadata`: only jobs whose metadata holds every one of these pairs; `without_metadata`:
    only jobs created without metadata.

    Returns (page, has_more).
    """
    check_page_limit(limit)
    if metadata and without_metadata:
        raise bad_request("Filter by metadata pairs or by metadata=null, not both.", param="metadata")
    with db.session() as s:
        where = [Job.method != MERGE]
        if without_metadata:
            where.append(Job.user_metadata.is_(None))
        dialect = s.get_bind().dialect.name
        where += [has_pair(Job.user_metadata, dialect, key, value) for key, value in sorted((metadata or {}).items())]
        unknown = f"No fine-tuning job {after!r} to list after."
        page = tenant_page(s, Job, tenant_id, where=where, after=after, unknown=unknown, limit=limit)
        return [job_info(j) for j in page.items], page.has_more
