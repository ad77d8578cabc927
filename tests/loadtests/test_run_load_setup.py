"""run_load before and around the run, without a server: adapter specs and the build cache;
tenant setup, warm-up, metering reads and the promoter thread against `httpx.MockTransport`;
the metering difference; the locust command line (Popen faked).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtests import launcher, lora_adapters
from loadtests.run_load import cli as load_cli
from loadtests.run_load import locust_process, metering
from loadtests.run_load import promoter as load_promoter
from loadtests.run_load import tenants as load_tenants
from tests.loadtests.locust_fakes import LOCUSTFILE, REAL_HTTPX_CLIENT

# --- run_load: adapters ---------------------------------------------------------------------


def test_adapter_specs_cycle_the_shapes_with_distinct_seeds() -> None:
    specs = [lora_adapters.adapter_spec(i) for i in range(6)]
    assert [s.dirname for s in specs] == [
        "r8-qv-s1000",
        "r4-qkvo-s1001",
        "r8-gud-s1002",
        "r4-qvd-s1003",
        "r8-qv-s1004",
        "r4-qkvo-s1005",
    ]
    assert len(set(specs)) == 6


def test_build_adapters_reuses_a_complete_cache_without_loading_a_model(tmp_path: Path) -> None:
    specs = [lora_adapters.adapter_spec(i) for i in range(3)]
    for s in specs:
        (tmp_path / s.dirname).mkdir()
        (tmp_path / s.dirname / "adapter_model.safetensors").write_bytes(b"")
    paths = lora_adapters.build_adapters(specs, tmp_path, tmp_path / "no-such-model")
    assert paths == {s: tmp_path / s.dirname for s in specs}


# --- run_load: setup through the admin API --------------------------------------------------


@pytest.fixture
def patched_httpx(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[httpx.Request], httpx.Response]], None]:
    """Route run_load's own httpx.Client(...) and httpx.get(...) through a MockTransport handler."""
    real_client = REAL_HTTPX_CLIENT

    def install(handler: Callable[[httpx.Request], httpx.Response]) -> None:
        transport = httpx.MockTransport(handler)

        def client(**kwargs: Any) -> httpx.Client:
            return real_client(transport=transport, **kwargs)

        def get(url: str, **kwargs: Any) -> httpx.Response:
            with real_client(transport=transport) as c:
                return c.get(url, **kwargs)

        monkeypatch.setattr(httpx, "Client", client)
        monkeypatch.setattr(httpx, "get", get)

    return install


def admin_client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    return REAL_HTTPX_CLIENT(
        base_url="http://tailor", headers={"Authorization": "Bearer adm"}, transport=httpx.MockTransport(handler)
    )


def test_setup_tenants_registers_adapters_in_popularity_order(
    tmp_path: Path, patched_httpx: Callable[[Callable[[httpx.Request], httpx.Response]], None]
) -> None:
    calls: list[tuple[str, str, Any]] = []
    versions: Counter[str] = Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        calls.append((request.method, request.url.path, body))
        path = request.url.path
        if path == "/v1/models":
            assert request.headers["Authorization"] == "Bearer key-load-T-0"
            return httpx.Response(200, json={"data": [{"id": "Base"}, {"id": "other"}]})
        assert request.headers["Authorization"] == "Bearer adm"
        if path == "/admin/tenants":
            return httpx.Response(201, json={"name": body["name"]})
        if path.endswith("/keys"):
            return httpx.Response(201, json={"key": "key-" + path.split("/")[3]})
        if path.endswith("/adapters/register"):
            versions[path + body["name"]] += 1
            n = versions[path + body["name"]]
            return httpx.Response(201, json={"versions": [{"version": v} for v in range(1, n + 1)]})
        return httpx.Response(404)

    patched_httpx(handler)
    specs = [lora_adapters.adapter_spec(i) for i in range(7)]
    paths = {s: tmp_path / s.dirname for s in specs}
    with admin_client(handler) as admin:
        tenants = load_tenants.setup_tenants(
            admin,
            tenants=2,
            adapters_per_tenant=3,
            paths=paths,
            url="http://tailor",
            run_tag="T",
            promote_second=paths[specs[6]],
        )
    assert [asdict(t) for t in tenants] == [
        {
            "tenant": "load-T-0",
            "key": "key-load-T-0",
            "models": ["support", "Base", "billing", "legal"],
            "base_model": "Base",
        },
        {
            "tenant": "load-T-1",
            "key": "key-load-T-1",
            "models": ["support", "Base", "billing", "legal"],
            "base_model": "Base",
        },
    ]
    registrations = [(p.split("/")[3], b["name"], b["path"], b["activate"]) for m, p, b in calls if "register" in p]
    assert registrations == [
        ("load-T-0", "support", str(paths[specs[0]]), True),
        ("load-T-0", "billing", str(paths[specs[1]]), True),
        ("load-T-0", "legal", str(paths[specs[2]]), True),
        ("load-T-0", "support", str(paths[specs[6]]), True),  # the second version, to flip during load
        ("load-T-1", "support", str(paths[specs[3]]), True),
        ("load-T-1", "billing", str(paths[specs[4]]), True),
        ("load-T-1", "legal", str(paths[specs[5]]), True),
    ]
    assert sum(1 for _, p, _ in calls if p == "/v1/models") == 1  # the base model's name is asked once


def test_setup_tenants_names_adapters_past_the_list_and_stops_on_an_error(
    tmp_path: Path, patched_httpx: Callable[[Callable[[httpx.Request], httpx.Response]], None]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "Base"}]})
        if path.endswith("/keys"):
            return httpx.Response(201, json={"key": "k"})
        if path.endswith("/register") and json.loads(request.content)["name"] == "adapter-9":
            return httpx.Response(409, text="already registered")
        return httpx.Response(201, json={})

    patched_httpx(handler)
    paths = {lora_adapters.adapter_spec(i): tmp_path / str(i) for i in range(10)}
    with admin_client(handler) as admin:
        [tenant] = load_tenants.setup_tenants(
            admin, tenants=1, adapters_per_tenant=9, paths=paths, url="http://tailor", run_tag="x", promote_second=None
        )
        assert tenant.models == ["support", "Base", *load_tenants.ADAPTER_NAMES[1:], "adapter-8"]
        with pytest.raises(RuntimeError, match=r"registering load-y-0/adapter-9 failed: HTTP 409 already registered"):
            load_tenants.setup_tenants(
                admin, tenants=1, adapters_per_tenant=10, paths=paths, url="http://t", run_tag="y", promote_second=None
            )


def test_warm_up_sends_one_token_per_tenant_and_model(
    patched_httpx: Callable[[Callable[[httpx.Request], httpx.Response]], None],
) -> None:
    seen: list[tuple[str, str, int]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.headers["Authorization"], body["model"], body["max_tokens"]))
        if body["model"] == "broken":
            return httpx.Response(503, text="adapter failed to load")
        return httpx.Response(200, json={"choices": []})

    patched_httpx(handler)
    tenants = [
        load_tenants.TenantSetup("a", "ka", ["support", "Base"], "Base"),
        load_tenants.TenantSetup("b", "kb", ["Base"], "Base"),
    ]
    load_tenants.warm_up("http://tailor", tenants)
    assert seen == [("Bearer ka", "support", 1), ("Bearer ka", "Base", 1), ("Bearer kb", "Base", 1)]
    with pytest.raises(RuntimeError, match="warm-up c/broken: HTTP 503 adapter failed to load"):
        load_tenants.warm_up("http://tailor", [load_tenants.TenantSetup("c", "kc", ["broken"], "Base")])


# --- run_load: metering ---------------------------------------------------------------------


def test_fetch_usage_queries_the_day_range_per_tenant_and_concatenates() -> None:
    queries: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/admin/usage"
        queries.append(dict(request.url.params))
        return httpx.Response(200, json={"data": [{"model": "m", "tenant": request.url.params.get("tenant")}]})

    with admin_client(handler) as admin:
        body, note = metering.fetch_usage(admin, "2025-01-01", "2025-01-02", ["t1", "t2"])
        assert note == "" and body == {"data": [{"model": "m", "tenant": "t1"}, {"model": "m", "tenant": "t2"}]}
        body, note = metering.fetch_usage(admin, "2025-01-01", "2025-01-01")
        assert note == "" and body == {"data": [{"model": "m", "tenant": None}]}
    base = {"since": "2025-01-01", "group_by": "model", "format": "json"}
    assert queries == [
        {**base, "until": "2025-01-02", "tenant": "t1"},
        {**base, "until": "2025-01-02", "tenant": "t2"},
        {**base, "until": "2025-01-01"},
    ]


@pytest.mark.parametrize(
    ("respond", "tenants", "note"),
    [
        (lambda r: httpx.Response(404), (), "GET /admin/usage: 404 (no metering route on this gateway)"),
        (lambda r: httpx.Response(404, text="no tenant"), ("t",), "GET /admin/usage: HTTP 404 no tenant"),
        (lambda r: httpx.Response(500, text="oops"), (), "GET /admin/usage: HTTP 500 oops"),
        (lambda r: httpx.Response(200, json={"rows": []}), (), "GET /admin/usage: unexpected body ('data')"),
        (lambda r: httpx.Response(200, text="not json"), (), "GET /admin/usage: unexpected body ("),
    ],
    ids=["no-route", "tenant-404", "server-error", "no-data", "not-json"],
)
def test_fetch_usage_says_why_there_is_no_metering(
    respond: Callable[[httpx.Request], httpx.Response], tenants: tuple[str, ...], note: str
) -> None:
    with admin_client(respond) as admin:
        body, why = metering.fetch_usage(admin, "d", "d", tenants)
    assert body is None and why.startswith(note)


def test_fetch_usage_survives_a_connection_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with admin_client(refuse) as admin:
        body, why = metering.fetch_usage(admin, "d", "d")
    assert body is None and why == "GET /admin/usage failed: connection refused"


def test_usage_delta_subtracts_before_from_after_per_model() -> None:
    before = {
        "data": [
            {"model": "Base", "requests": 10, "errors": 1, "prompt_tokens": 100, "completion_tokens": 50, "cost": 0.01},
            {"model": "idle", "requests": 4, "cost": 0.2},
        ]
    }
    after = {
        "data": [
            # two rows for one model (e.g. two tenants): summed
            {
                "model": "Base",
                "requests": 40,
                "errors": 1,
                "prompt_tokens": 500,
                "completion_tokens": 250,
                "cost": 0.02,
            },
            {
                "model": "Base",
                "requests": "20",
                "errors": None,
                "prompt_tokens": 100,
                "completion_tokens": 50,
                "cost": 0.015,
            },
            {"model": "support", "requests": 150, "client_closed": 2, "completion_tokens": 900, "cost": "0.45"},
            {"model": "idle", "requests": 4, "cost": 0.2},  # unchanged: left out
            {"model": "junk", "requests": "n/a"},
        ]
    }
    delta = metering.usage_delta(before, after)
    assert set(delta["per_model"]) == {"Base", "support"}
    assert delta["per_model"]["Base"] == pytest.approx(
        {"requests": 50, "errors": 0, "client_closed": 0, "prompt_tokens": 500, "completion_tokens": 250, "cost": 0.025}
    )
    assert delta["per_model"]["support"]["requests"] == 150 and delta["per_model"]["support"]["client_closed"] == 2
    assert delta["totals"] == pytest.approx(
        {
            "requests": 200,
            "errors": 0,
            "client_closed": 2,
            "prompt_tokens": 500,
            "completion_tokens": 1150,
            "cost": 0.475,
        }
    )
    assert metering.usage_delta(None, after)["totals"]["requests"] == 214  # no before: everything after


# --- run_load: promotion during load --------------------------------------------------------


def test_promoter_flips_between_versions_and_recovers_from_a_failed_switch(
    patched_httpx: Callable[[Callable[[httpx.Request], httpx.Response]], None],
) -> None:
    promoter = load_promoter.Promoter("http://tailor", "adm", "acme", "support", interval_s=0.001)
    base = "/admin/tenants/acme/adapters/support"
    posts: list[tuple[str, Any]] = []
    replies = iter(
        [
            httpx.Response(200, json={"active_version": 1}),
            httpx.Response(200, json={"active_version": 2}),
            httpx.Response(500, text="database is locked"),
            httpx.Response(200, json={"active_version": 2}),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer adm"
        if request.method == "GET":
            assert request.url.path == base
            return httpx.Response(200, json={"active_version": 1})  # the failed rollback did happen
        posts.append((request.url.path, json.loads(request.content) if request.content else None))
        reply = next(replies, None)
        if reply is None or len(posts) >= 4:
            promoter.stop_event.set()
        return reply or httpx.Response(200, json={"active_version": 2})

    patched_httpx(handler)
    promoter.run()  # in this thread; ends when the handler sets stop_event
    assert posts == [
        (f"{base}/rollback", None),
        (f"{base}/activate", {"version": 2}),
        (f"{base}/rollback", None),
        (f"{base}/activate", {"version": 2}),  # after asking: v1 was active, so activate
    ]
    assert [(s.action, s.status, s.active_after, s.error) for s in promoter.switches] == [
        ("rollback", 200, 1, ""),
        ("activate v2", 200, 2, ""),
        ("rollback", 500, None, "database is locked"),
        ("activate v2", 200, 2, ""),
    ]
    ts = [s.t for s in promoter.switches]
    assert ts == sorted(ts) and all(s.ms >= 0 for s in promoter.switches)


# --- run_load: the locust subprocess --------------------------------------------------------


class FakePopen:
    instances: list[FakePopen] = []

    def __init__(self, cmd: list[str], **kwargs: Any) -> None:
        self.cmd, self.kwargs = cmd, kwargs
        self.signals: list[int] = []
        self.waits: list[float | None] = []
        self.returncode: int | None = None
        self.hang = kwargs["env"].get("HANG") == "1"
        FakePopen.instances.append(self)

    def wait(self, timeout: float | None = None) -> int:
        self.waits.append(timeout)
        if self.hang and not self.signals:
            raise subprocess.TimeoutExpired(self.cmd, timeout or 0)
        self.returncode = 0 if not self.signals else -signal.SIGINT
        return self.returncode

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)

    def kill(self) -> None:  # pragma: no cover - only when SIGINT is ignored
        raise AssertionError("kill not expected")


@pytest.fixture
def fake_popen(monkeypatch: pytest.MonkeyPatch) -> type[FakePopen]:
    FakePopen.instances = []
    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    monkeypatch.setattr(locust_process, "parse_timespan", lambda text: {"30s": 30.0}[text])
    return FakePopen


def test_run_locust_command_line(tmp_path: Path, fake_popen: type[FakePopen]) -> None:
    args = load_cli._parser().parse_args(["--users", "4", "--spawn-rate", "2", "--run-time", "30s"])
    env = {"TAILOR_LOAD_TENANTS": "t.json"}
    rc = locust_process.run_locust(args, "http://127.0.0.1:9", tmp_path, env, ["--stream-share", "0.9"])
    assert rc == 0
    [proc] = fake_popen.instances
    assert proc.cmd == [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locust_process.LOCUSTFILE),
        "--headless",
        "-u",
        "4",
        "-r",
        "2.0",
        "-t",
        "30s",
        "--host",
        "http://127.0.0.1:9",
        "--csv",
        str(tmp_path / "locust"),
        "--html",
        str(tmp_path / "locust.html"),
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--stream-share",
        "0.9",
    ]
    assert proc.kwargs["env"] is env and proc.kwargs["cwd"] == launcher.ROOT
    assert proc.waits == [30.0 + locust_process.LOCUST_GRACE_S] and proc.signals == []
    assert (tmp_path / "locust.log").exists()
    assert locust_process.LOCUSTFILE == LOCUSTFILE


def test_run_locust_interrupts_a_locust_that_overruns(tmp_path: Path, fake_popen: type[FakePopen]) -> None:
    args = load_cli._parser().parse_args(["--run-time", "30s"])
    rc = locust_process.run_locust(args, "http://h", tmp_path, {"HANG": "1"}, [])
    assert rc == -1
    [proc] = fake_popen.instances
    assert proc.signals == [signal.SIGINT] and proc.waits == [150.0, 15]
