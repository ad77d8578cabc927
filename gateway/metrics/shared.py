"""Metrics shared by the gateway's worker processes (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, multiprocess
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
MIRROR_INTERVAL_S = 1.0


def multiprocess_dir() -> str | None:
    """Where this process's metrics are shared with its sibling workers; None: not shared."""
    return os.environ.get(MULTIPROC_DIR_ENV) or None


# How each worker's copy of a `ProcessState` gauge combines across the live workers.
_MIRROR_MODES = {
    "tailor_engine_healthy": "livemin",  # healthy only while every worker finds it so
    "tailor_engine_inflight": "livesum",
    "tailor_engine_resident_adapters": "livemax",  # each worker's own; the engine holds at least this many
    "tailor_interaction_log_queue_depth": "livesum",
    "tailor_metrics_label_values": "livemax",
}


class Mirror:
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


class Merged(Collector):
    """Every worker's metrics, read from the shared directory; this worker's state copied in
    first, and the gauges of workers that are gone dropped (uvicorn restarts a worker that
    dies, without telling prometheus_client)."""

    def __init__(self, path: str, mirror: Mirror) -> None:
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
