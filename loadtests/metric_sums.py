"""A Prometheus exposition (the gateway's `GET /metrics`) read as one sum per sample name."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def metric_sums(text: str) -> dict[str, float]:
    """Each sample name (`..._total`, a histogram's `..._sum` and `..._count`) summed over its labels."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums
