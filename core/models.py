"""SQLAlchemy 2 models: the state Tailor keeps. Schema changes go through Alembic.

Why one long module: it is the schema, one table after another with no logic beyond column
types. Alembic compares the migrations with this one metadata, and a reader checks a foreign
key or an index by looking in one place.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from core.ids import as_utc, utcnow
from core.states import VersionKind, VersionState


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite stores a datetime without its zone (an aware one written as is would lose its
    offset) and hands it back naive; PostgreSQL hands it back in the connection's zone. Both
    ways go through core.ids.as_utc, so every value written is UTC and every value read is
    aware UTC: rows need no fixing after a read, on either backend.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # {requests_per_minute, tokens_per_minute, tokens_per_day, tokens_per_month}; absent: unlimited
    limits: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    retention_days: Mapped[int | None] = mapped_column(Integer)  # None: interactions kept until deleted
    redact_pii: Mapped[bool] = mapped_column(Boolean, default=False)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(24))
    name: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class Adapter(Base):
    """A tenant's adapter name (what clients pass as `model`), pointing at its active version."""

    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    active_version_id: Mapped[str | None] = mapped_column(
        ForeignKey("adapter_versions.id", use_alter=True, name="fk_adapters_active_version")
    )
    # A share of this name's traffic goes to the canary version until it is promoted.
    canary_version_id: Mapped[str | None] = mapped_column(String(40))
    canary_fraction: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # The highest version number given so far: a deleted version's number is never reused,
    # so `name@vN` never comes to mean other weights.
    last_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    versions: Mapped[list[AdapterVersion]] = relationship(
        back_populates="adapter", foreign_keys="AdapterVersion.adapter_id", order_by="AdapterVersion.version"
    )


class AdapterVersion(Base):
    """An immutable adapter: files in the store under `digest`, never changed after commit."""

    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("adapter_id", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    adapter_id: Mapped[str] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    rank: Mapped[int] = mapped_column(Integer)
    alpha: Mapped[float] = mapped_column(Float)
    target_modules: Mapped[list[str]] = mapped_column(JSON)
    base_model: Mapped[str] = mapped_column(String(200))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # core.states.VersionState, stored as its value and read back as a plain string
    state: Mapped[str] = mapped_column(String(16), default=VersionState.ACTIVE)
    # core.states.VersionKind: an adapter on the base model's engines, or a full model on its own.
    kind: Mapped[str] = mapped_column(String(16), default=VersionKind.ADAPTER, server_default=VersionKind.ADAPTER.value)
    source: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Lineage: where the version came from and why it serves.
    parent_version_id: Mapped[str | None] = mapped_column(String(40))
    job_id: Mapped[str | None] = mapped_column(String(40), index=True)
    dataset_id: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    promoted_at: Mapped[datetime | None]
    promoted_by: Mapped[str | None] = mapped_column(String(64))

    adapter: Mapped[Adapter] = relationship(back_populates="versions", foreign_keys=[adapter_id])


class Interaction(Base):
    """One request through an OpenAI route: what was asked, what came back, how it went."""

    __tablename__ = "interactions"
    __table_args__ = (
        Index("ix_interactions_tenant_created", "tenant_id", "created_at"),
        # Partial: only the few stored completions are indexed, so the hot insert path of
        # every other request pays nothing for it.
        Index(
            "ix_interactions_stored",
            "tenant_id",
            "created_at",
            sqlite_where=text("stored = 1"),
            postgresql_where=text("stored"),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    api_key_id: Mapped[str | None] = mapped_column(String(40))
    endpoint: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(200))
    adapter_version_id: Mapped[str | None] = mapped_column(String(40), index=True)
    engine: Mapped[str | None] = mapped_column(String(200))
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    response_text: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    status_code: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A chat completion created with `store: true`: served back by the stored completions API.
    stored: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Its OpenAI `metadata` (string keys and values), changed only by the update route.
    stored_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The batch it was a line of (None: an interactive request): usage reports it apart, at the batch price.
    batch_id: Mapped[str | None] = mapped_column(String(40))


class StoredResponse(Base):
    """A Responses API answer created with `store` (OpenAI's default): what GET returns, and
    what `previous_response_id` continues. Each row holds only its own turn (the input items
    it was sent and the Response object with its output); a conversation is the chain of
    `previous_response_id` links, so deleting or expiring one turn removes it everywhere."""

    __tablename__ = "responses"
    __table_args__ = (Index("ix_responses_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # also its interaction's id
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(200))
    previous_response_id: Mapped[str | None] = mapped_column(String(64))
    input_items: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)  # the Response object as the client got it
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Feedback(Base):
    """A rating, correction and/or preference about one interaction (or an imported example)."""

    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    interaction_id: Mapped[str | None] = mapped_column(String(64), index=True)
    # The adapter version that produced the rated answer (copied from the interaction).
    adapter_version_id: Mapped[str | None] = mapped_column(String(40), index=True)
    model: Mapped[str | None] = mapped_column(String(200))
    rating: Mapped[str | None] = mapped_column(String(8))  # good | bad
    score: Mapped[float | None] = mapped_column(Float)
    correction: Mapped[str | None] = mapped_column(Text)
    preferred: Mapped[str | None] = mapped_column(Text)
    rejected: Mapped[str | None] = mapped_column(Text)
    # Prompt messages for imported feedback that has no interaction.
    messages: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(16), default="api")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StoredFile(Base):
    """A file of OpenAI's Files API: an uploaded training file (purpose fine-tune) or batch
    input (batch), or a batch's output or error file (batch_output)."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))  # sft | preference | prompts | rated | batch | batch_output
    line_count: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(300))
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# A batch in these states still runs (or will), and reads its input file.
UNFINISHED_BATCH_STATES = ("validating", "in_progress", "finalizing", "cancelling")


class Batch(Base):
    """A batch of requests (OpenAI's Batch API), run line by line by one gateway at a time.

    A gateway holds a batch while `lease_expires_at` is in the future (`worker_id` names it);
    one whose lease ran out is taken over by another, which skips the lines already in
    `batch_lines` (gateway.batches).
    """

    __tablename__ = "batches"
    __table_args__ = (
        Index("ix_batches_tenant_created", "tenant_id", "created_at"),
        Index("ix_batches_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    api_key_id: Mapped[str | None] = mapped_column(String(40))  # the key that created it: lines run as its caller
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(40))
    completion_window: Mapped[str] = mapped_column(String(8))
    # validating | in_progress | finalizing | completed | failed | expired | cancelling | cancelled
    status: Mapped[str] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(200))  # every line's model, when they all name one
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)  # why a batch failed (OpenAI's BatchError)
    output_file_id: Mapped[str | None] = mapped_column(String(40))
    error_file_id: Mapped[str | None] = mapped_column(String(40))
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    # Tokens of the recorded lines' answers (OpenAI's Batch `usage`), counted with each line.
    input_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    output_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    reasoning_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    in_progress_at: Mapped[datetime | None]
    finalizing_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    expired_at: Mapped[datetime | None]
    cancelling_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    worker_id: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]


class BatchLine(Base):
    """One finished line of a running batch: its output line, kept until the batch's output
    and error files are written. `line` is the request's place in the input (0-based)."""

    __tablename__ = "batch_lines"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    failed: Mapped[bool] = mapped_column(Boolean)
    output: Mapped[dict[str, Any]] = mapped_column(JSON)


class Dataset(Base):
    """An immutable dataset snapshot: the exact examples a run trained and was judged on."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # content hash
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(String(16))  # feedback | file
    sft_count: Mapped[int] = mapped_column(Integer)
    preference_count: Mapped[int] = mapped_column(Integer)
    heldout_count: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(300))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """A fine-tuning job, claimed from this table by one trainer worker at a time."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # core.states.JobStatus, stored as its value and read back as a plain string
    status: Mapped[str] = mapped_column(String(20))
    method: Mapped[str] = mapped_column(String(16))  # supervised | dpo | distillation
    model: Mapped[str] = mapped_column(String(200))  # base model or adapter name it starts from
    adapter_name: Mapped[str] = mapped_column(String(64))  # the name the result is registered under
    suffix: Mapped[str | None] = mapped_column(String(64))
    training_file: Mapped[str | None] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40))
    dataset_id: Mapped[str | None] = mapped_column(String(64))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The method's other settings (distillation: context and teacher; secrets sealed).
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    source: Mapped[str] = mapped_column(String(16), default="api")  # api | feedback | policy
    fine_tuned_model: Mapped[str | None] = mapped_column(String(200))
    result_version_id: Mapped[str | None] = mapped_column(String(40))
    decision: Mapped[str | None] = mapped_column(String(16))  # promoted | canary | candidate | rejected
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    trained_tokens: Mapped[int | None] = mapped_column(Integer)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Where a paused job goes on from (trainer.jobs.ResumePoint); kept until it ends.
    resume_point: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The client's OpenAI `metadata` (string pairs), set when the job is created.
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobCheckpoint(Base):
    __tablename__ = "job_checkpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    path: Mapped[str] = mapped_column(String(500))
    # The adapter at this step in the adapter store, which makes the checkpoint callable as a
    # model (adapters.checkpoints); None for checkpoints saved before migration 0009.
    digest: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Evaluation(Base):
    """Candidate vs the version it would replace, on a dataset's held-out split."""

    __tablename__ = "evaluations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str | None] = mapped_column(String(40), index=True)
    candidate_version_id: Mapped[str] = mapped_column(String(40))
    baseline_version_id: Mapped[str | None] = mapped_column(String(40))  # None: the base model
    dataset_id: Mapped[str | None] = mapped_column(String(64))
    candidate_metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    baseline_metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    decision: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[list[str]] = mapped_column(JSON)
    report_key: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TenantPolicy(Base):
    """How a tenant's adapters are retrained and promoted."""

    __tablename__ = "tenant_policies"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    retrain: Mapped[str] = mapped_column(
        String(16), default="on_demand"
    )  # off | on_demand | feedback_count | drift | schedule
    retrain_min_feedback: Mapped[int] = mapped_column(Integer, default=50)
    retrain_interval_hours: Mapped[float] = mapped_column(Float, default=24.0)
    auto_promote: Mapped[bool] = mapped_column(Boolean, default=False)
    canary_fraction: Mapped[float] = mapped_column(Float, default=0.0)
    gates: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # A grader spec (trainer.rewards): set, a triggered run trains with the reinforcement
    # method on the adapter's logged prompts instead of on feedback.
    reward_grader: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Set, an adapter with at least this share of the tenant's chat traffic (and at least
    # merge_min_requests requests) is merged into the base by itself (trainer.merge_policy;
    # the default is trainer.policy.DEFAULT_MERGE_MIN_REQUESTS).
    merge_above_share: Mapped[float | None] = mapped_column(Float)
    merge_min_requests: Mapped[int] = mapped_column(Integer, default=1000, server_default="1000")
    last_triggered_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class RateCounter(Base):
    """Requests or tokens a tenant used in one window: the shared store of its rate limits.

    `bucket` numbers the window (minutes or days since the epoch, or year*12+month), so a
    counter is found and bumped by one upsert from any gateway replica.
    """

    __tablename__ = "rate_counters"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # requests_minute | tokens_minute | ...
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class AuditEvent(Base):
    """One administrative or tenant-management action. Append-only: database triggers refuse
    UPDATE and DELETE (see migration 0004), and no code path issues them."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_tenant_at", "tenant_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(80))  # "admin", "key:<key id>", "cli:<user>"
    # No foreign key: the record of what was done to a tenant outlives the tenant.
    tenant_id: Mapped[str | None] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(64), index=True)  # e.g. "tenant.create", "adapter.promote"
    target: Mapped[str | None] = mapped_column(String(200))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ConsoleSession(Base):
    """One console sign-in. The cookie carries a random token; only its SHA-256 is stored
    (`id`), so a copy of the table opens no session. Sign-out sets `revoked_at`."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the cookie's token
    role: Mapped[str] = mapped_column(String(16))  # "admin" | "tenant"
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime | None]
