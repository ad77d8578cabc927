"""Fine-tuning jobs in the database: submit, read, list, cancel, pause and resume them.

Each action (`submit`, `cancel_job`, `pause_job`, `resume_job`) takes who acts (`actor`,
core.audit) and appends its audit event in its own transaction: the routes, the console,
the CLI and the worker's retraining policy all call these, and none records after the fact.

A job is a row in `jobs`. The gateway (or the CLI) creates it `queued`; a trainer worker
claims it (`running`), beats its heartbeat at every training step, and finishes it
(`succeeded` | `failed` | `cancelled`). Everything here is a plain function on
`core.db.Database`, shared by the worker, the OpenAI routes, the admin API and tests.

Pausing (OpenAI's `pause` / `resume`): `pause_job` flags a running job; its training run
saves a checkpoint at its next step and stops, and the worker lets go of it as `paused`
(`mark_paused`, with a `ResumePoint`: that checkpoint and the steps done and left).
`resume_job` queues it again; the next worker to claim it trains the remaining steps from
that checkpoint's adapter (trainer.worker). A pause asked for before training starts
takes effect at the first training step; one asked for after the last step has no effect.

Claiming, heartbeats, finishing and recovering a dead worker's job, and why two workers
never share a job: trainer.job_queue. Events, checkpoints and evaluations: trainer.job_records.
Each tenant may have at most `max_queued_jobs` waiting (core.quotas).

Hyperparameters (OpenAI's names, "auto", and Tailor's extras) are trainer.hyperparameters'.

Modules: info (JobInfo, ResumePoint), methods (what each method trains on), creation (submit),
reading (get and list), control (cancel, pause, resume), from_feedback (a job on a tenant's
feedback, snapshotted as it is queued).
"""

from trainer.jobs.control import cancel_job, drop_unneeded_secrets, pause_job, resume_job
from trainer.jobs.creation import RESERVED_METADATA_PREFIX, submit
from trainer.jobs.from_feedback import submit_from_feedback
from trainer.jobs.info import JobInfo, ResumePoint, job_info
from trainer.jobs.methods import SFT_METHODS, feedback_snapshot, training_examples, validate_hyperparameters
from trainer.jobs.reading import check_page_limit, get_job, list_jobs, owned_job

__all__ = [
    "RESERVED_METADATA_PREFIX",
    "SFT_METHODS",
    "JobInfo",
    "ResumePoint",
    "cancel_job",
    "check_page_limit",
    "drop_unneeded_secrets",
    "feedback_snapshot",
    "get_job",
    "job_info",
    "list_jobs",
    "owned_job",
    "pause_job",
    "resume_job",
    "submit",
    "submit_from_feedback",
    "training_examples",
    "validate_hyperparameters",
]
