"""Prometheus scrape endpoint.

Unauthenticated, like /health: it shows counts and latencies, never request content or
internal ids. Tenants and their model names appear only where the operator turns that on
(TAILOR_METRICS_TENANT_LABELS), and then bounded (gateway/metrics/labels.py); expose /metrics to
the scraper's network only, or block it at the proxy.
"""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from gateway.deps import ServicesDep

router = APIRouter(tags=["metrics"])


# A plain `def`: FastAPI runs it in a worker thread, so the scrape-time database count
# (job queue depth) never blocks the event loop.
@router.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=Response)
def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.telemetry.metrics.registry), media_type=CONTENT_TYPE_LATEST)
