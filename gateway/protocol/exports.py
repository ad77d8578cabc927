"""Listings that come as JSON or, with `format=csv`, as a CSV download (the audit log, usage)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Query

Format = Literal["json", "csv"]
FORMAT_QUERY = Query("json", alias="format")
# The route's 200 in the OpenAPI document: its response model, or text/csv.
CSV_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with `format=csv`."}
}
