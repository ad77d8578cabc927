"""Promotion during load: a thread flips one adapter between two versions while locust runs."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

import httpx


@dataclass
class Switch:
    t: float  # seconds since the load started
    action: str  # "activate v2" or "rollback"
    status: int
    ms: float
    active_after: int | None
    error: str = ""


class Promoter(threading.Thread):
    """Flips `tenant`'s adapter `name` between its two versions until stopped."""

    def __init__(self, url: str, admin_key: str, tenant: str, name: str, interval_s: float) -> None:
        super().__init__(name="promoter", daemon=True)
        self.url, self.admin_key, self.tenant, self.name = url, admin_key, tenant, name
        self.interval_s = interval_s
        self.stop_event = threading.Event()
        self.switches: list[Switch] = []

    def run(self) -> None:
        started = time.monotonic()
        base = f"/admin/tenants/{self.tenant}/adapters/{self.name}"
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        active: int | None = 2  # the second registration is active at the start
        with httpx.Client(base_url=self.url, headers=headers, timeout=30) as admin:
            while not self.stop_event.wait(self.interval_s):
                # v2 -> rollback -> v1 -> activate v2 -> v2 ... (rollback marks v2 rolled_back;
                # activating it again makes v1 the earlier version to roll back to).
                if active == 2:
                    action, path, body = "rollback", f"{base}/rollback", None
                else:
                    action, path, body = "activate v2", f"{base}/activate", {"version": 2}
                t0 = time.perf_counter()
                try:
                    r = admin.post(path, json=body)
                    ms = (time.perf_counter() - t0) * 1000
                    after = r.json().get("active_version") if r.status_code == 200 else None
                    error = "" if r.status_code == 200 else r.text[:200]
                    status = r.status_code
                except (httpx.HTTPError, ValueError) as exc:
                    ms, after, error, status = (time.perf_counter() - t0) * 1000, None, str(exc), 0
                self.switches.append(Switch(time.monotonic() - started, action, status, ms, after, error))
                if after is not None:
                    active = after
                else:
                    # Unknown state: ask, so the next switch is the right one.
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        active = admin.get(base).json().get("active_version")
