"""Traces of fine-tuning jobs: one span per job run, a child per stage.

`fine_tuning <method>` (attributes: job, tenant, adapter name, starting model, attempt;
at the end the decision and the version) with children `dataset`, `train`, `evaluate`,
`register` and `apply`. A failed job's span carries the exception and an error status; a
cancelled one does not (cancelling is not a failure). Exported like the gateway's spans
(TAILOR_OTEL_EXPORTER, TAILOR_OTEL_ENDPOINT) under the service name `tailor-trainer`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import Status, StatusCode

from core.otel import add_exporter, make_exporter, make_provider
from core.states import JobStatus

_NULL: contextlib.nullcontext[None] = contextlib.nullcontext()


class JobTracing:
    def __init__(self, settings: Any) -> None:
        self.provider: TracerProvider | None = None
        self.tracer: trace.Tracer | None = None
        if settings.otel_exporter != "none":
            self.add_exporter(make_exporter(settings.otel_exporter, settings.otel_endpoint))

    def add_exporter(self, exporter: SpanExporter, *, batch: bool = True) -> None:
        if self.provider is None:
            self.provider = make_provider("tailor-trainer")
            self.tracer = self.provider.get_tracer("tailor.trainer")
        add_exporter(self.provider, exporter, batch=batch)

    @contextlib.contextmanager
    def job(self, job: Any, *, ok: tuple[type[BaseException], ...] = ()) -> Iterator[trace.Span | None]:
        """The job's root span; exceptions of the `ok` types end it without an error status."""
        if self.tracer is None:
            yield None
            return
        attributes = {
            "tailor.job.id": job.id,
            "tailor.tenant.id": job.tenant_id,
            "tailor.job.method": job.method,
            "tailor.adapter.name": job.adapter_name,
            "tailor.job.attempt": job.attempts,
            "gen_ai.request.model": job.model,
        }
        with self.tracer.start_as_current_span(
            f"fine_tuning {job.method}", attributes=attributes, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                yield span
            except ok:
                span.set_attribute("tailor.job.outcome", JobStatus.CANCELLED.value)
                raise
            except BaseException as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    def stage(self, name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
        if self.tracer is None:
            return _NULL
        return self.tracer.start_as_current_span(name, attributes={f"tailor.{k}": v for k, v in attributes.items()})

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()
