"""Telemetry of one gateway: Prometheus metrics, OpenTelemetry traces and JSON log lines.

`Telemetry` is what the rest of the gateway talks to: the proxy calls
`request_started` / `request_finished` once per completion, and the engine pool reports
adapter loads and evictions to it (it is the pool's observer; adapters/ never imports
gateway/). Metrics live in gateway/metrics/, traces in gateway/tracing.py.

Settings read (with defaults until they exist on `Settings`):
  otel_exporter   "none" | "console" | "otlp"   (TAILOR_OTEL_EXPORTER, default none)
  otel_endpoint   OTLP/HTTP collector base URL  (TAILOR_OTEL_ENDPOINT)
  log_format      "text" | "json"               (TAILOR_LOG_FORMAT; see JsonFormatter)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry import trace

from gateway.metrics import Metrics, Scraped, TenantNames
from gateway.tracing import Tracing

if TYPE_CHECKING:
    from core.config import Settings
    from gateway.interaction_log import InteractionRecord

# The interaction being answered by the current task; log lines carry it.
INTERACTION_ID: ContextVar[str | None] = ContextVar("tailor_interaction_id", default=None)


class Telemetry:
    def __init__(self, settings: Settings, tenant_names: TenantNames) -> None:
        self.metrics = Metrics(settings, tenant_names, max_label_values=settings.metrics_max_label_values)
        self.tracing = Tracing(settings)

    def watch(self, scraped: Scraped) -> None:
        """What /metrics reads at scrape time, once the services holding it exist."""
        self.metrics.watch(scraped)

    # --- one completion request ---------------------------------------------------
    def request_started(self, kind: str, record: InteractionRecord, body: Mapping[str, Any], request: Any) -> Any:
        """Count the request in flight and open its span; returns the span handle for finish.

        `request` (Starlette's) is only read when tracing is on, for a client's traceparent.
        """
        INTERACTION_ID.set(record.id)
        self.metrics.request_started(record.endpoint)
        return self.tracing.start(kind, record, body, request)

    def request_finished(self, spans: Any, record: InteractionRecord, model_known: bool) -> None:
        """Once per request, with the record complete (status, latency, tokens)."""
        self.metrics.request_finished(record, model_known)
        spans.finish(record)

    # --- engine pool observer (adapters.engines.PoolObserver) ----------------------------
    def adapter_loaded(self, engine: str, name: str, seconds: float, ok: bool) -> None:
        self.metrics.adapter_loaded(engine, seconds, ok)
        self.tracing.adapter_loaded(engine, name, seconds, ok)

    def adapter_evicted(self, engine: str, name: str) -> None:
        self.metrics.adapter_evicted(engine)
        self.tracing.adapter_evicted(engine, name)

    def dedicated_engine_started(self, seconds: float, ok: bool) -> None:
        """A full-model version's engine started (or failed to) after `seconds`."""
        self.metrics.dedicated_engine_started(seconds, ok)

    def db_unavailable(self, what: str, *, served_stale: bool | None) -> None:
        """A lookup the database could not answer: served from a stale cache entry, refused,
        or (served_stale None) let through without the check."""
        outcome = "open" if served_stale is None else "stale" if served_stale else "refused"
        self.metrics.db_unavailable.labels(what, outcome).inc()

    def start(self) -> None:
        """On the event loop, once it runs (Services.start)."""
        self.metrics.start()

    def shutdown(self) -> None:
        self.metrics.stop()
        self.tracing.shutdown()


# Attributes every LogRecord has; anything else came from `extra=` and is logged too.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, interaction and trace ids.

    `interaction_id` comes from `extra={"interaction_id": ...}` or the request being
    answered; `trace_id`/`span_id` from the current OpenTelemetry span (only when tracing
    is on). Other `extra=` fields are included as they are.

        handler.setFormatter(JsonFormatter())
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        interaction_id = getattr(record, "interaction_id", None) or INTERACTION_ID.get()
        if interaction_id:
            out["interaction_id"] = interaction_id
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            out["trace_id"] = f"{ctx.trace_id:032x}"
            out["span_id"] = f"{ctx.span_id:016x}"
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
