"""Cost from the gateway's metering endpoint (`GET /admin/usage`): read before and after, subtracted."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import httpx


def fetch_usage(
    admin: httpx.Client, since: str, until: str, tenants: Sequence[str] = ()
) -> tuple[dict[str, Any] | None, str]:
    """The metering endpoint's rows for the days `since`..`until`, or None and why not.

    With `tenants`: only theirs (one query each, `tenant=`), for gateways others use too.
    """
    rows: list[dict[str, Any]] = []
    for tenant in tenants or [None]:
        params = {"since": since, "until": until, "group_by": "model", "format": "json"}
        if tenant:
            params["tenant"] = tenant
        try:
            r = admin.get("/admin/usage", params=params, timeout=30)
        except httpx.HTTPError as exc:
            return None, f"GET /admin/usage failed: {exc}"
        if r.status_code == 404 and not tenant:
            return None, "GET /admin/usage: 404 (no metering route on this gateway)"
        if r.status_code != 200:
            return None, f"GET /admin/usage: HTTP {r.status_code} {r.text[:200]}"
        try:
            rows += list(r.json()["data"])
        except (ValueError, KeyError, TypeError) as exc:
            return None, f"GET /admin/usage: unexpected body ({exc})"
    return {"data": rows}, ""


_METER_FIELDS = ("requests", "errors", "client_closed", "prompt_tokens", "completion_tokens", "cost")


def _num(value: Any) -> float:
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


def usage_delta(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, Any]:
    """What the run added: per model and in total (after - before, both for the same day)."""

    def rows(body: dict[str, Any] | None) -> dict[str, dict[str, float]]:
        table: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(_METER_FIELDS, 0.0))
        for row in (body or {}).get("data") or []:
            for f in _METER_FIELDS:
                table[str(row.get("model"))][f] += _num(row.get(f))
        return table

    b, a = rows(before), rows(after)
    per_model = {}
    for model, values in a.items():
        d = {f: values[f] - b.get(model, dict.fromkeys(_METER_FIELDS, 0.0))[f] for f in _METER_FIELDS}
        if d["requests"] > 0:
            per_model[model] = d
    totals = {f: sum(d[f] for d in per_model.values()) for f in _METER_FIELDS}
    return {"per_model": per_model, "totals": totals}
