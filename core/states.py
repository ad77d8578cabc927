"""The states a fine-tuning job and an adapter version move through, and the groups of them
that code asks about.

Both are StrEnums: a member is the very string the database stores and the API sends, so
rows read back (plain strings) compare equal to the members, and JSON carries the value.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """A fine-tuning job's status: stored in `jobs.status`, sent as the job object's `status`."""

    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    # Stopped at a checkpoint on request, until resumed. Missing from the status enum of
    # OpenAI's published schema, though its pause endpoint answers with it (the schema's own
    # example) and the SDK passes it through.
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# Jobs that wait for a worker; a running job no longer holds a place in the queue.
WAITING_JOB_STATUSES = (JobStatus.VALIDATING_FILES, JobStatus.QUEUED)
# Jobs not yet ended: waiting, running, or paused (which may be resumed).
OPEN_JOB_STATUSES = (*WAITING_JOB_STATUSES, JobStatus.RUNNING, JobStatus.PAUSED)
# Jobs that have ended; none of them changes again.
TERMINAL_JOB_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class VersionState(StrEnum):
    """Where an adapter version is in its life: stored in `adapter_versions.state`."""

    TRAINING = "training"
    # Stored (trained, or back from a canary) but not served under its name; callable as name@vN.
    CANDIDATE = "candidate"
    # Serves the adapter's canary fraction of traffic beside the active version.
    CANARY = "canary"
    ACTIVE = "active"
    # Served before and was replaced by a promotion: what a rollback goes back to.
    RETIRED = "retired"
    # Served before and was rolled back from: a further rollback skips it.
    ROLLED_BACK = "rolled_back"
    # Refused by evaluation or by hand (the reason is in its metrics).
    REJECTED = "rejected"
    FAILED = "failed"
    # Uploaded without being activated.
    REGISTERED = "registered"


class VersionKind(StrEnum):
    """What a model version's stored files are: stored in `adapter_versions.kind`.

    Both kinds share a tenant's names, versions, aliases, canaries and promotion; only where
    a request is served differs.
    """

    # A LoRA adapter, loaded at run time into an engine of the base model.
    ADAPTER = "adapter"
    # A complete checkpoint (full fine-tune, distilled student, merged adapter), served by
    # engines of its own (adapters.dedicated).
    MODEL = "model"


class FinetuningType(StrEnum):
    """Which weights a fine-tuning job trains: its `finetuning_type` hyperparameter."""

    LORA = "lora"  # a LoRA adapter: the result is a version of kind ADAPTER
    FULL = "full"  # every weight: the result (and each checkpoint) is a version of kind MODEL


# Versions that exist but must never serve (still training, or broken).
UNSERVABLE_VERSION_STATES = (VersionState.TRAINING, VersionState.FAILED)
