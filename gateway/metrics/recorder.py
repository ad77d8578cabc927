"""The metrics the gateway counts as it works: requests on the hot path, and what the engine
pool reports (adapter loads and evictions, cold starts)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from gateway.metrics.labels import ADAPTER, ALL_TENANTS, OTHER, BoundedLabel, error_type
from gateway.metrics.scrape import JobTable, ProcessState, Scraped, TenantLabels, TenantNames
from gateway.metrics.shared import MIRROR_INTERVAL_S, Merged, Mirror, multiprocess_dir

if TYPE_CHECKING:
    from core.config import Settings
    from gateway.interaction_log import InteractionRecord

ENDPOINTS = ("chat.completions", "completions", "responses", "fine_tuning.graders")

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
COLD_START_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_STATUS_CLASS = tuple(f"{i}xx" for i in range(10))


class Metrics:
    def __init__(self, settings: Settings, tenant_names: TenantNames, *, max_label_values: int = 50) -> None:
        self.registry = CollectorRegistry()  # what /metrics exposes
        r = self.registry
        self.shared = multiprocess_dir()
        # Shared: the metric objects write to the directory and /metrics reads it, so the
        # registry they are created in is never exposed itself.
        own = self._own = CollectorRegistry() if self.shared else r
        self.bases = tuple(b.name for b in settings.bases)  # each labelled by its own name
        self.named = settings.metrics_tenant_labels
        self.tenant_names = tenant_names
        self.tenants = BoundedLabel(max_label_values)
        # The base models are free.
        self.models = BoundedLabel(max_label_values + len(self.bases), preset=self.bases)
        # The series labelled by tenant; by id until TenantLabels renames them at scrape time.
        series = CollectorRegistry() if self.named and not self.shared else own
        self.mirror: Mirror | None = None
        if self.named and not self.shared:
            r.register(TenantLabels(tenant_names, series))
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
        state = ProcessState(scraped, self.tenants, self.models)
        if self.shared:
            self.mirror = Mirror(state, self._own)
            merged: Collector = Merged(self.shared, self.mirror)
            r.register(TenantLabels(self.tenant_names, merged) if self.named else merged)
        else:
            r.register(state)
        # Read from the database: once per scrape, by whichever process answers it.
        r.register(JobTable(scraped.job_counts, scraped.job_durations))

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
        return model if model in self.bases else ADAPTER

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
    async def _mirror_loop(mirror: Mirror) -> None:
        while True:
            mirror.publish()
            await asyncio.sleep(MIRROR_INTERVAL_S)
