"""Prometheus metrics of one gateway: counted on the hot path, the rest read at scrape time.

Every `Services` owns its own `CollectorRegistry` (tests run several apps in one process;
the global registry would mix them and refuse the second registration).

/metrics is unauthenticated, so its labels say nothing about tenants unless the operator
turns that on (`TAILOR_METRICS_TENANT_LABELS`): by default `tenant` is "all" and `model` is
the base model's name or "adapter" (adapter names are the tenants' own). When on, `tenant`
is the tenant's name and `model` the name the client used. Internal ids are never label
values: the request path knows a tenant by id, so the series are kept by id and the ids
swapped for names when Prometheus scrapes (`_TenantNames`, names read from the database
there, off the request path).

Label cardinality is bounded. Each distinct label set is a time series held in this
process's memory and in Prometheus's TSDB for as long as it is retained, and a histogram
costs one series per bucket. Tenants and (public) model names grow with the business, and
model names are chosen by tenants, so unbounded labels would grow both without limit. So
`tenant` and `model` take real values only for the first `max_label_values` (50) distinct
values this process sees, and "other" afterwards; a model name counts only once it
resolved to a model, so requests for made-up names (404s) cannot use up the slots. The
series count is therefore fixed by configuration, whatever traffic does. Per-tenant
accounting beyond the cap belongs to the interaction log / usage API, which are exact.
`tailor_metrics_label_values{label}` shows how close a process is to the cap.

Several gateway processes on one port (`tailor serve --workers`) are one gateway to Prometheus:
with PROMETHEUS_MULTIPROC_DIR set (the parent sets it, to a directory of its own), every
metric writes to files there and /metrics, whichever worker answers it, reads them all
(prometheus_client's multiprocess mode). Gauges say how workers' values combine
(`multiprocess_mode`). State that lives in one worker's memory (its engine pool, its log
queue) is copied into such metrics every second and before each scrape (`_Mirror`); what is
read from the database is read once per scrape, by the worker answering it. Per-process
collectors (CPU, GC) are left out there, as prometheus_client's multiprocess mode requires.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from core.errors import error_type_for_status
from core.models import Job, Tenant
from core.states import OPEN_JOB_STATUSES, TERMINAL_JOB_STATUSES

if TYPE_CHECKING:
    from adapters.dedicated import DedicatedEngines
    from adapters.engines import EnginePool
    from core.config import Settings
    from core.db import Database
    from gateway.interaction_log import InteractionLog, InteractionRecord

log = logging.getLogger("tailor.metrics")

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
MIRROR_INTERVAL_S = 1.0

OTHER = "other"
ALL_TENANTS = "all"  # the tenant label unless the operator turns tenant labels on
ADAPTER = "adapter"  # the model label of every adapter, likewise
CLIENT_CLOSED = 499
ENDPOINTS = ("chat.completions", "completions", "responses", "fine_tuning.graders")

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
COLD_START_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
JOB_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)
_STATUS_CLASS = tuple(f"{i}xx" for i in range(10))


class BoundedLabel:
    """The first `limit` distinct values pass through; later ones become "other"."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int, *, preset: tuple[str, ...] = ()) -> None:
        self.limit = limit
        self.seen: set[str] = set(preset)

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) < self.limit:
            self.seen.add(value)
            return value
        return OTHER


def error_type(status: int) -> str:
    """OpenAI's error `type` for a status; a client that went away has none, so its own."""
    return "client_disconnected" if status == CLIENT_CLOSED else error_type_for_status(status)


def multiprocess_dir() -> str | None:
    """Where this process's metrics are shared with its sibling workers; None: not shared."""
    return os.environ.get(MULTIPROC_DIR_ENV) or None


# Tenant ids -> the names of those that exist (may raise: the caller logs and goes on).
TenantNames = Callable[[set[str]], dict[str, str]]


@dataclass(frozen=True)
class Scraped:
    """What /metrics reads when Prometheus scrapes, beyond what requests count: this process's
    engines and interaction log, and the job queue (read from the database; may raise)."""

    pool: EnginePool
    dedicated: DedicatedEngines
    interactions: InteractionLog
    job_counts: Callable[[], dict[str, int]]
    job_durations: Callable[[], dict[str, list[float]]]


class Metrics:
    def __init__(self, settings: Settings, tenant_names: TenantNames, *, max_label_values: int = 50) -> None:
        self.registry = CollectorRegistry()  # what /metrics exposes
        r = self.registry
        self.shared = multiprocess_dir()
        # Shared: the metric objects write to the directory and /metrics reads it, so the
        # registry they are created in is never exposed itself.
        own = self._own = CollectorRegistry() if self.shared else r
        self.base = settings.base_model_name
        self.named = settings.metrics_tenant_labels
        self.tenant_names = tenant_names
        self.tenants = BoundedLabel(max_label_values)
        self.models = BoundedLabel(max_label_values + 1, preset=(self.base,))  # the base model is free
        # The series labelled by tenant; by id until _TenantNames renames them at scrape time.
        series = CollectorRegistry() if self.named and not self.shared else own
        self.mirror: _Mirror | None = None
        if self.named and not self.shared:
            r.register(_TenantNames(tenant_names, series))
        labels = ("endpoint", "status_class", "tenant", "model")
        self.requests = Counter("tailor_requests", "Completion requests answered.", labels, registry=series)
        self.latency = Histogram(
            "tailor_request_duration_seconds",
            "Completion request latency, to the last byte sent.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=series,
        )
        self.ttft = Histogram(
            "tailor_time_to_first_token_seconds",
            "Time to the first generated text of a streamed completion.",
            ("endpoint", "tenant", "model"),
            buckets=TTFT_BUCKETS,
            registry=series,
        )
        self.tokens = Counter(
            "tailor_tokens", "Tokens processed, by type (input|output).", ("type", "tenant", "model"), registry=series
        )
        self.errors = Counter(
            "tailor_errors",
            "Completion requests that failed, by OpenAI error type.",
            ("endpoint", "type"),
            registry=own,
        )
        inflight = Gauge(
            "tailor_requests_in_flight",
            "Completion requests being answered.",
            ("endpoint",),
            registry=own,
            multiprocess_mode="livesum",
        )
        self.inflight = {endpoint: inflight.labels(endpoint) for endpoint in ENDPOINTS}
        Gauge(
            "tailor_gateway_processes",
            "Gateway processes serving this address (tailor serve --workers).",
            registry=own,
            multiprocess_mode="livesum",
        ).set(1)
        self.adapter_loads = Counter(
            "tailor_adapter_loads",
            "Adapter loads onto engines, by outcome (ok|error).",
            ("engine", "outcome"),
            registry=own,
        )
        self.adapter_load_seconds = Histogram(
            "tailor_adapter_load_duration_seconds",
            "Time an engine took to load an adapter.",
            ("engine",),
            buckets=LOAD_BUCKETS,
            registry=own,
        )
        self.adapter_evictions = Counter(
            "tailor_adapter_evictions", "Adapters unloaded to make room (LRU).", ("engine",), registry=own
        )
        self.cold_starts = Histogram(
            "tailor_dedicated_engine_start_duration_seconds",
            "Cold starts of full-model versions' own engines: time until the engine took requests, by outcome "
            "(ok|error).",
            ("outcome",),
            buckets=COLD_START_BUCKETS,
            registry=own,
        )
        self.db_unavailable = Counter(
            "tailor_database_unavailable",
            "Lookups the database could not answer, by what (key|model|limits) and outcome (stale|refused|open).",
            ("what", "outcome"),
            registry=own,
        )
        if not self.shared:
            ProcessCollector(registry=r)
            GCCollector(registry=r)
        self._mirroring: asyncio.Task[None] | None = None
        # Bound children per label set: labels() costs a lock and a tuple of str() per
        # call, so each set is resolved once and reused.
        self._children: dict[tuple[str, str, str, str], tuple[Any, ...]] = {}
        self._error_children: dict[tuple[str, int], Any] = {}

    def watch(self, scraped: Scraped) -> None:
        """Expose what `scraped` holds, read when Prometheus scrapes. Once, after this object:
        the engine pool it names reports its adapter loads here."""
        r = self.registry
        state = _ProcessState(scraped, self)
        if self.shared:
            self.mirror = _Mirror(state, self._own)
            merged: Collector = _Merged(self.shared, self.mirror)
            r.register(_TenantNames(self.tenant_names, merged) if self.named else merged)
        else:
            r.register(state)
        # Read from the database: once per scrape, by whichever process answers it.
        r.register(_JobTable(scraped.job_counts, scraped.job_durations))

    # --- hot path ---------------------------------------------------------------
    def request_started(self, endpoint: str) -> None:
        self.inflight[endpoint].inc()

    def request_finished(self, record: InteractionRecord, model_known: bool) -> None:
        endpoint, status = record.endpoint, record.status_code
        self.inflight[endpoint].dec()
        key = (
            endpoint,
            _STATUS_CLASS[status // 100] if 0 <= status < 1000 else "other",
            self.tenants(record.tenant_id) if self.named else ALL_TENANTS,
            self._model_label(record.model, model_known),
        )
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = self._bind(key)
        requests, latency, ttft, tokens_in, tokens_out = children
        requests.inc()
        if record.latency_ms is not None:
            latency.observe(record.latency_ms / 1000)
        if record.ttft_ms is not None:
            ttft.observe(record.ttft_ms / 1000)
        if record.prompt_tokens:
            tokens_in.inc(record.prompt_tokens)
        if record.completion_tokens:
            tokens_out.inc(record.completion_tokens)
        if status >= 400:
            err = self._error_children.get((endpoint, status))
            if err is None:
                err = self._error_children[(endpoint, status)] = self.errors.labels(endpoint, error_type(status))
            err.inc()

    def _model_label(self, model: str, known: bool) -> str:
        if not known:
            return OTHER
        if self.named:
            return self.models(model)
        return model if model == self.base else ADAPTER

    def _bind(self, key: tuple[str, str, str, str]) -> tuple[Any, ...]:
        endpoint, _, tenant, model = key
        return (
            self.requests.labels(*key),
            self.latency.labels(*key),
            self.ttft.labels(endpoint, tenant, model),
            self.tokens.labels("input", tenant, model),
            self.tokens.labels("output", tenant, model),
        )

    # --- engine pool observer ---------------------------------------------------------
    def adapter_loaded(self, engine: str, seconds: float, ok: bool) -> None:
        self.adapter_loads.labels(engine, "ok" if ok else "error").inc()
        if ok:
            self.adapter_load_seconds.labels(engine).observe(seconds)

    def adapter_evicted(self, engine: str) -> None:
        self.adapter_evictions.labels(engine).inc()

    def dedicated_engine_started(self, seconds: float, ok: bool) -> None:
        self.cold_starts.labels("ok" if ok else "error").observe(seconds)

    # --- several processes ------------------------------------------------------------
    def start(self) -> None:
        """Shared metrics: copy this process's state into them every second (on the event loop)."""
        if self.mirror is not None:
            self._mirroring = asyncio.create_task(self._mirror_loop(self.mirror), name="metrics-mirror")

    def stop(self) -> None:
        if self._mirroring is not None:
            self._mirroring.cancel()

    @staticmethod
    async def _mirror_loop(mirror: _Mirror) -> None:
        while True:
            mirror.publish()
            await asyncio.sleep(MIRROR_INTERVAL_S)


class _TenantNames(Collector):
    """The tenant-labelled series of `source`, each tenant id replaced by the tenant's name.

    Names are read from the database when Prometheus scrapes (never per request) and kept:
    a tenant's name does not change. A series whose tenant is gone (and was never named
    here) is left out rather than shown by id.
    """

    def __init__(self, read: TenantNames, source: Collector) -> None:
        self.read = read
        self.source = source
        self.names: dict[str, str] = {}

    def collect(self) -> Iterator[Any]:
        families = list(self.source.collect())
        ids = {s.labels["tenant"] for f in families for s in f.samples if "tenant" in s.labels} - {OTHER}
        self._learn(ids - self.names.keys())
        for family in families:
            family.samples = [
                s._replace(labels={**s.labels, "tenant": self.names[s.labels["tenant"]]})
                if s.labels.get("tenant", OTHER) != OTHER
                else s
                for s in family.samples
                if s.labels.get("tenant", OTHER) == OTHER or s.labels["tenant"] in self.names
            ]
            yield family

    def _learn(self, ids: set[str]) -> None:
        if not ids:
            return
        try:
            self.names.update(self.read(ids))
        except Exception as exc:  # a scrape must not fail because the database does
            log.warning("metrics: could not read tenant names: %s", exc)


class _ProcessState(Collector):
    """State that already lives in this process's memory, read when Prometheus scrapes (never
    per request), or copied into shared metrics by `_Mirror`."""

    def __init__(self, scraped: Scraped, metrics: Metrics) -> None:
        self.scraped = scraped
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        s = self.scraped
        healthy = GaugeMetricFamily("tailor_engine_healthy", "1 if the engine passes health checks.", labels=["engine"])
        inflight = GaugeMetricFamily("tailor_engine_inflight", "Requests leased to the engine.", labels=["engine"])
        resident = GaugeMetricFamily(
            "tailor_engine_resident_adapters", "Adapters loaded on the engine.", labels=["engine"]
        )
        for e in s.pool.engines:
            healthy.add_metric([e.url], 1.0 if e.healthy and not e.restarting else 0.0)
            inflight.add_metric([e.url], e.inflight)
            resident.add_metric([e.url], len(e.resident))
        yield from (healthy, inflight, resident)
        dedicated = GaugeMetricFamily(
            "tailor_dedicated_engines", "Engines of full-model versions, by state (starting|ready).", labels=["state"]
        )
        states = [str(e["state"]) for e in s.dedicated.stats()]
        for state in ("starting", "ready"):
            dedicated.add_metric([state], states.count(state))
        yield dedicated

        log_ = s.interactions
        yield GaugeMetricFamily(
            "tailor_interaction_log_queue_depth", "Interaction records waiting to be written.", value=log_.queue.qsize()
        )
        yield CounterMetricFamily(
            "tailor_interaction_log_dropped", "Interaction records dropped (queue full or refused).", value=log_.dropped
        )
        yield CounterMetricFamily("tailor_interaction_log_written", "Interaction records written.", value=log_.written)

        values = GaugeMetricFamily(
            "tailor_metrics_label_values",
            "Distinct values in a bounded label (the rest count as other).",
            labels=["label"],
        )
        values.add_metric(["tenant"], len(self.metrics.tenants.seen))
        values.add_metric(["model"], len(self.metrics.models.seen))
        yield values


class _JobTable(Collector):
    """The job queue, read from the database when Prometheus scrapes."""

    def __init__(self, counts: Callable[[], dict[str, int]], durations: Callable[[], dict[str, list[float]]]) -> None:
        self.counts = counts
        self.durations = durations

    def collect(self) -> Iterator[Any]:
        jobs = self._job_counts()
        if jobs is not None:
            family = GaugeMetricFamily(
                "tailor_jobs", "Fine-tuning jobs waiting, running or paused, by status.", labels=["status"]
            )
            for status in OPEN_JOB_STATUSES:
                family.add_metric([status], jobs.get(status, 0))
            yield family
        durations = self._job_durations()
        if durations is not None:
            # Jobs run in the trainer processes, which serve no /metrics: their durations
            # are read from the jobs table, so every gateway replica reports the same.
            family = HistogramMetricFamily(
                "tailor_job_duration_seconds", "Fine-tuning jobs, start to finish, by final status.", labels=["status"]
            )
            for status in TERMINAL_JOB_STATUSES:
                values = durations.get(status, [])
                buckets = [(str(b), sum(v <= b for v in values)) for b in JOB_BUCKETS] + [("+Inf", len(values))]
                family.add_metric([status], buckets, sum(values))
            yield family

    def _job_durations(self) -> dict[str, list[float]] | None:
        try:
            return self.durations()
        except Exception as exc:  # a scrape must not fail because the database does
            log.warning("metrics: could not read job durations: %s", exc)
            return None

    def _job_counts(self) -> dict[str, int] | None:
        try:
            return self.counts()
        except Exception as exc:  # a scrape must not fail because the database does
            log.warning("metrics: could not count jobs: %s", exc)
            return None


# --- what the collectors read from the database -----------------------------------------
def tenant_names(db: Database, ids: set[str]) -> dict[str, str]:
    with db.session() as session:
        rows = session.execute(select(Tenant.id, Tenant.name).where(Tenant.id.in_(ids))).tuples()
        return dict(rows.all())


def open_job_counts(db: Database) -> dict[str, int]:
    # One indexed COUNT ... GROUP BY per scrape (ix_jobs_status_created).
    query = select(Job.status, func.count()).where(Job.status.in_(OPEN_JOB_STATUSES)).group_by(Job.status)
    with db.session() as session:
        return {status: n for status, n in session.execute(query)}


def job_durations(db: Database) -> dict[str, list[float]]:
    """Seconds from start to finish of the finished jobs, by final status."""
    query = select(Job.status, Job.started_at, Job.finished_at).where(
        Job.status.in_(TERMINAL_JOB_STATUSES), Job.started_at.is_not(None), Job.finished_at.is_not(None)
    )
    with db.session() as session:
        out: dict[str, list[float]] = {}
        for status, started, finished in session.execute(query):
            out.setdefault(status, []).append(max(0.0, (finished - started).total_seconds()))
        return out


# How each worker's copy of a `_ProcessState` gauge combines across the live workers.
_MIRROR_MODES = {
    "tailor_engine_healthy": "livemin",  # healthy only while every worker finds it so
    "tailor_engine_inflight": "livesum",
    "tailor_engine_resident_adapters": "livemax",  # each worker's own; the engine holds at least this many
    "tailor_interaction_log_queue_depth": "livesum",
    "tailor_metrics_label_values": "livemax",
}


class _Mirror:
    """Copies a collector's gauges and counters into multiprocess metrics (gauges set, counters
    advanced by what they grew since the last copy), so every worker's /metrics shows them."""

    def __init__(self, source: Collector, registry: CollectorRegistry) -> None:
        self.source = source
        self.registry = registry
        self.metrics: dict[str, Any] = {}
        self.counted: dict[tuple[str, tuple[str, ...]], float] = {}
        self.lock = threading.Lock()  # the scrape's thread and the event loop both publish

    def publish(self) -> None:
        with self.lock:
            for family in self.source.collect():
                for sample in family.samples:
                    if family.type == "gauge":
                        self._child(family, sample.labels).set(sample.value)
                    elif family.type == "counter" and sample.name.endswith("_total"):
                        key = (family.name, tuple(sample.labels.values()))
                        grew = sample.value - self.counted.get(key, 0.0)
                        if grew > 0:
                            self._child(family, sample.labels).inc(grew)
                        self.counted[key] = sample.value

    def _child(self, family: Metric, labels: dict[str, str]) -> Any:
        metric = self.metrics.get(family.name)
        if metric is None:
            names = tuple(labels)
            if family.type == "gauge":
                mode = _MIRROR_MODES.get(family.name, "livesum")
                metric = Gauge(family.name, family.documentation, names, registry=self.registry, multiprocess_mode=mode)
            else:
                metric = Counter(family.name, family.documentation, names, registry=self.registry)
            self.metrics[family.name] = metric
        return metric.labels(**labels) if labels else metric


class _Merged(Collector):
    """Every worker's metrics, read from the shared directory; this worker's state copied in
    first, and the gauges of workers that are gone dropped (uvicorn restarts a worker that
    dies, without telling prometheus_client)."""

    def __init__(self, path: str, mirror: _Mirror) -> None:
        self.path = path
        self.mirror = mirror
        self.files = multiprocess.MultiProcessCollector(None, path=path)

    def collect(self) -> Iterator[Any]:
        self.mirror.publish()
        for pid in _dead_writers(self.path):
            multiprocess.mark_process_dead(pid, self.path)
        yield from self.files.collect()


def _dead_writers(path: str) -> set[int]:
    """Processes that left live-mode gauge files (gauge_live*_<pid>.db) and no longer run."""
    dead = set()
    for name in os.listdir(path):
        if name.startswith("gauge_live") and name.endswith(".db"):
            pid = int(name[: -len(".db")].rsplit("_", 1)[1])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                dead.add(pid)
            except PermissionError:
                pass  # alive, someone else's: not one of ours, but not dead either
    return dead
