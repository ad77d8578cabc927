"""Metering reports (`/v1/usage`, `/admin/usage`, `/v1/adapters/{name}/stats`)."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel

from gateway import usage


class UsageList(BaseModel):
    object: Literal["list"] = "list"
    since: date
    until: date
    group_by: list[str]
    # The metering dataclasses themselves: pydantic serializes them field by field.
    data: list[usage.UsageRow]
    totals: usage.UsageTotals


class VersionStatsList(BaseModel):
    object: Literal["list"] = "list"
    adapter: str
    data: list[usage.VersionStats]
