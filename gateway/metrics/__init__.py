"""Prometheus metrics of one gateway: counted on the hot path, the rest read at scrape time.

Every `Services` owns its own `CollectorRegistry` (tests run several apps in one process;
the global registry would mix them and refuse the second registration).

/metrics is unauthenticated, so its labels say nothing about tenants unless the operator
turns that on (`TAILOR_METRICS_TENANT_LABELS`): by default `tenant` is "all" and `model` is
the base model's name or "adapter" (adapter names are the tenants' own). When on, `tenant`
is the tenant's name and `model` the name the client used. Internal ids are never label
values: the request path knows a tenant by id, so the series are kept by id and the ids
swapped for names when Prometheus scrapes (`TenantLabels`, names read from the database
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
queue) is copied into such metrics every second and before each scrape (`Mirror`); what is
read from the database is read once per scrape, by the worker answering it. Per-process
collectors (CPU, GC) are left out there, as prometheus_client's multiprocess mode requires.

- `recorder`: `Metrics`, what the gateway counts as it works; `labels`: their label values
- `scrape`: what is read when Prometheus scrapes (`Scraped`); `tables`: its database reads
- `shared`: several worker processes as one gateway
"""

from gateway.metrics.labels import CLIENT_CLOSED, error_type
from gateway.metrics.recorder import Metrics
from gateway.metrics.scrape import Scraped, TenantNames
from gateway.metrics.shared import MULTIPROC_DIR_ENV, _dead_writers
from gateway.metrics.tables import job_durations, open_job_counts, tenant_names

__all__ = [
    "CLIENT_CLOSED",
    "MULTIPROC_DIR_ENV",
    "Metrics",
    "Scraped",
    "TenantNames",
    "_dead_writers",
    "error_type",
    "job_durations",
    "open_job_counts",
    "tenant_names",
]
