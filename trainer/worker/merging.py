"""The worker's side of a merge (trainer.merge): the adapter version merged into the base,
checked, validated like any uploaded model, and registered as the name's next version."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters import promotion, registry
from adapters.registry import Lineage, VersionInfo
from core import audit
from core.errors import not_found
from core.states import JobStatus
from trainer import job_queue
from trainer.compute.merge import merge_adapter
from trainer.merge import MergeRequest
from trainer.worker.job_run import JobRun

if TYPE_CHECKING:
    from trainer.worker.loop import Worker


def source_version(w: Worker, run: JobRun, request: MergeRequest) -> VersionInfo:
    """The adapter version the merge was asked for, unless it was deleted meanwhile."""
    job = run.job
    adapter = registry.get_adapter(w.db, job.tenant_id, job.adapter_name)
    found = next((v for v in adapter.versions if v.id == request.version_id), None)
    if found is None:
        raise not_found(
            f"Version {request.version} of {job.adapter_name!r} was deleted before it could be merged.",
            code="version_not_found",
        )
    return found


def merge(w: Worker, run: JobRun) -> None:
    """Run the merge job `run` to its end: a new model version (activated if asked), the
    check's figures on it and on the job."""
    job = run.job
    request = MergeRequest.from_json(job.config or {})
    source = source_version(w, run, request)
    w.event(job, f"Merging {job.adapter_name} version {source.version} into the base model's weights")
    out_dir = run.workdir / "merged"
    check = merge_adapter(w.settings.base_model_path, w.store.local_path(source.digest), out_dir)
    metrics = check.as_metrics()
    w.event(
        job,
        f"Merged in {check.seconds:.0f} s: logits within {check.max_abs_logit_diff:.2g} of the adapter's, "
        f"{check.next_token_agreement:.1%} of greedy next tokens kept in {check.dtype}",
        data=metrics,
    )
    actor = audit.actor_for_job(job.id)
    # Validated like any uploaded model, under the same size limit; served only once promoted.
    run.version = version = registry.register_dir(
        w.db,
        w.store,
        w.limits,
        source_dir=out_dir,
        source="merge",
        lineage=Lineage(job_id=job.id, parent_version_id=source.id, metrics=metrics),
        activate=False,
        tenant_id=job.tenant_id,
        name=job.adapter_name,
        base_model_name=w.settings.base_model_name,
        actor=actor,
    )
    pinned = f"{job.adapter_name}@v{version.version}"
    if request.activate:
        # Last before finishing: once the version serves, nothing else here can fail the job.
        promotion.promote(w.db, job.tenant_id, job.adapter_name, version.version, actor=actor, by=f"merge {job.id}")
    w.event(job, f"Registered {pinned}, a whole model" + (", now serving" if request.activate else ""))
    job_queue.finish_job(
        w.db,
        job.id,
        w.worker_id,
        status=JobStatus.SUCCEEDED,
        fine_tuned_model=pinned,
        result_version_id=version.id,
        metrics=metrics,
    )
