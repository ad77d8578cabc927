"""Merging an adapter into its base model's weights: asked for here, done by a trainer worker.

LoRA costs serving throughput on every request (vLLM's LoRA kernels); a merged copy of the
base, served on an engine of its own (adapters.dedicated), answers the same without it. The
gateway never loads weights, so a merge is queued as a job row of method `merge`: workers claim,
beat, requeue and finish it like training (trainer.job_queue) and the tenant's queued-job quota
counts it, but no OpenAI fine-tuning route shows it (trainer.jobs.reading). The worker's side is
trainer.worker.merging; the result is the name's next version, of kind `model`, with the adapter
version as its parent in the lineage.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from adapters import registry
from adapters.registry import VersionInfo
from core import audit
from core.db import Database
from core.errors import bad_request, not_found
from core.ids import new_id
from core.models import Job, JobEvent
from core.quotas import Quotas, Usage, operator_quotas, reserve
from core.states import UNSERVABLE_VERSION_STATES, JobStatus, VersionKind
from trainer.jobs.methods import MERGE


@dataclass(frozen=True)
class MergeRequest:
    """What a merge job's config holds: the adapter version to merge, and whether its result
    serves the name at once."""

    version: int
    version_id: str
    activate: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "version_id": self.version_id, "activate": self.activate}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MergeRequest:
        return cls(version=int(data["version"]), version_id=str(data["version_id"]), activate=bool(data["activate"]))


@dataclass(frozen=True)
class MergeInfo:
    id: str
    adapter_name: str
    source_version: int
    activate: bool
    status: JobStatus
    # The merged model: `name@vN` and its version number, once the merge succeeded.
    model: str | None
    version: int | None
    metrics: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None


def merge_info(job: Job) -> MergeInfo:
    request = MergeRequest.from_json(job.config or {})
    model = job.fine_tuned_model
    return MergeInfo(
        id=job.id,
        adapter_name=job.adapter_name,
        source_version=request.version,
        activate=request.activate,
        status=JobStatus(job.status),
        model=model,
        version=int(model.rpartition("@v")[2]) if model else None,
        metrics=job.metrics,
        error=job.error,
        created_at=job.created_at,
        finished_at=job.finished_at,
    )


def mergeable_version(db: Database, tenant_id: str, name: str, version: int | None) -> VersionInfo:
    """The adapter version of the tenant's `name` to merge: `version`, else the active one.
    404 for a name or version the tenant does not have; 400 for a whole model (nothing to merge)
    or a version that cannot serve."""
    adapter = registry.get_adapter(db, tenant_id, name)
    number = version if version is not None else adapter.active_version
    if number is None:
        raise bad_request(f"{name!r} has no active version; name the version to merge.", param="version")
    found = next((v for v in adapter.versions if v.version == number), None)
    if found is None:
        raise not_found(f"Adapter {name!r} has no version {number}.", code="version_not_found", param="version")
    if found.kind != VersionKind.ADAPTER:
        raise bad_request(
            f"Version {number} of {name!r} is a whole model, not an adapter: there is nothing to merge.",
            code="not_an_adapter",
            param="version",
        )
    if found.state in UNSERVABLE_VERSION_STATES:
        raise bad_request(
            f"Version {number} of {name!r} is {found.state}; only a stored adapter can be merged.",
            code="version_not_servable",
            param="version",
        )
    return found


def request_merge(
    db: Database,
    tenant_id: str,
    name: str,
    *,
    version: int | None,
    activate: bool,
    actor: str,
    base_model: str,
    quotas: Quotas | None = None,
    other_bases: Collection[str] = (),
) -> MergeInfo:
    """Queue the merge of `name`'s adapter version (mergeable_version) for a worker, recording
    `adapter.merge` by `actor` in the same transaction. A tenant with `max_queued_jobs` jobs
    waiting gets a 429, as for a fine-tuning job. Merges are into `base_model`, the default
    base: a version registered for one of `other_bases` is a 400."""
    source = mergeable_version(db, tenant_id, name, version)
    if source.base_model in other_bases:
        raise bad_request(
            f"Version {source.version} of {name!r} runs on base model {source.base_model!r}; merges are into "
            f"the default base model {base_model!r} only.",
            code="unsupported_base_model",
            param="version",
        )
    request = MergeRequest(version=source.version, version_id=source.id, activate=activate)
    job_id = new_id("merge")
    with db.session() as s:
        reserve(s, tenant_id, operator_quotas(quotas), Usage(queued_jobs=1))
        # The merged model starts from the base (`model`) and lands under `name`; no knobs.
        job = Job(
            id=job_id,
            method=MERGE,
            config=request.to_json(),
            hyperparameters={},
            model=base_model,
            adapter_name=name,
            tenant_id=tenant_id,
            status=JobStatus.QUEUED,
            source="api",
        )
        s.add(job)
        s.flush()
        s.add(JobEvent(job_id=job_id, level="info", message=f"Merge of {name} version {source.version} queued"))
        info = merge_info(job)
        audit.record(
            s,
            actor=actor,
            action="adapter.merge",
            tenant_id=tenant_id,
            target=name,
            after=request.to_json() | {"id": job_id},
        )
        return info


def get_merge(db: Database, tenant_id: str, name: str, merge_id: str) -> MergeInfo:
    """One of the tenant's merges of `name`; the same 404 for unknown and foreign ids."""
    with db.session() as s:
        job = s.get(Job, merge_id)
        if job is None or job.method != MERGE or job.tenant_id != tenant_id or job.adapter_name != name:
            raise not_found(f"Merge {merge_id!r} of {name!r} not found.", code="merge_not_found", param="merge_id")
        return merge_info(job)
