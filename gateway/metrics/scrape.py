"""What /metrics reads when Prometheus scrapes (never per request): this process's engines and
interaction log, the job queue and the tenants' names (from the database)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from core.states import OPEN_JOB_STATUSES, TERMINAL_JOB_STATUSES
from gateway.metrics.labels import OTHER, BoundedLabel

if TYPE_CHECKING:
    from adapters.dedicated import DedicatedEngines
    from adapters.engines import EnginePool
    from gateway.interaction_log import InteractionLog

log = logging.getLogger("tailor.metrics")

JOB_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)

# Tenant ids -> the names of those that exist (may raise: the caller logs and goes on).
TenantNames = Callable[[set[str]], dict[str, str]]


@dataclass(frozen=True)
class Scraped:
    """What /metrics reads when Prometheus scrapes, beyond what requests count: this process's
    engines and interaction log, and the job queue (read from the database; may raise)."""

    pools: Sequence[EnginePool]  # one per base model
    dedicated: DedicatedEngines
    interactions: InteractionLog
    job_counts: Callable[[], dict[str, int]]
    job_durations: Callable[[], dict[str, list[float]]]


class TenantLabels(Collector):
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


class ProcessState(Collector):
    """State that already lives in this process's memory, read when Prometheus scrapes (never
    per request), or copied into shared metrics by `Mirror`."""

    def __init__(self, scraped: Scraped, tenants: BoundedLabel, models: BoundedLabel) -> None:
        self.scraped = scraped
        self.tenants = tenants
        self.models = models

    def collect(self) -> Iterator[Any]:
        s = self.scraped
        healthy = GaugeMetricFamily("tailor_engine_healthy", "1 if the engine passes health checks.", labels=["engine"])
        inflight = GaugeMetricFamily("tailor_engine_inflight", "Requests leased to the engine.", labels=["engine"])
        resident = GaugeMetricFamily(
            "tailor_engine_resident_adapters", "Adapters loaded on the engine.", labels=["engine"]
        )
        for e in (engine for pool in s.pools for engine in pool.engines):
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
        values.add_metric(["tenant"], len(self.tenants.seen))
        values.add_metric(["model"], len(self.models.seen))
        yield values


class JobTable(Collector):
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
