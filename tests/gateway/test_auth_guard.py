"""What unauthenticated callers can cost (gateway.auth_guard): the key cache keeps unknown
keys apart and bounded, failed authentications are limited per client address, and the
address behind a proxy is believed only from a configured trusted proxy."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event
from starlette.requests import Request

from core.errors import TailorError
from gateway.auth_guard import FailedAuthLimiter, KeyCache
from gateway.deps import authenticate_request
from gateway.tenants import Caller
from tests.apputil import ADMIN, create_tenant, error, make_app, tenant_key

MISSING = object()  # what gateway.services stores for "no such key"
GOOD = Caller(tenant_id="ten-1", tenant_name="acme", key_id="key-1")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the key cache ------------------------------------------------------------------------------


def test_unknown_keys_do_not_evict_known_ones() -> None:
    cache = KeyCache(60.0, known_max=10, unknown_max=1000)
    cache.put("tk-good", GOOD)
    for i in range(50_000):
        cache.put(f"tk-random-{i}", MISSING)
    assert cache.get("tk-good") is GOOD
    assert len(cache.unknown) == 1000 and len(cache.known) == 1  # both bounded, neither flushed
    assert cache.get("tk-random-49999") is MISSING and cache.get("tk-random-0") is None  # LRU: oldest gone


def test_key_cache_expiry_staleness_and_clear() -> None:
    clock = Clock()
    cache = KeyCache(2.0, clock=clock)
    cache.put("tk-good", GOOD)
    cache.put("tk-bad", MISSING)
    clock.now += 3
    assert cache.get("tk-good") is None and cache.get("tk-bad") is None
    assert cache.get_stale("tk-good", 300) is GOOD and cache.get_stale("tk-good", 0.5) is None
    cache.put("tk-bad", GOOD)  # a key that did not exist a moment ago and now does
    assert cache.get("tk-bad") is GOOD and len(cache.unknown) == 0
    assert "tk-good" not in str(list(cache.known))  # keyed by hash, never by the secret
    cache.clear()
    assert cache.get("tk-bad") is None and cache.get_stale("tk-bad", 300) is None


# --- the per-address limiter --------------------------------------------------------------------


def test_failed_authentications_lock_one_address_for_the_rest_of_its_minute() -> None:
    clock = Clock()
    limiter = FailedAuthLimiter(3, clock=clock)
    for _ in range(3):
        limiter.check("192.0.2.1")
        limiter.failed("192.0.2.1")
    clock.now += 20
    with pytest.raises(TailorError) as refused:
        limiter.check("192.0.2.1")
    assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "40"}
    limiter.check("192.0.2.2")  # another address is not affected
    clock.now += 40
    limiter.check("192.0.2.1")  # a new minute


def test_limiter_off_and_bounded() -> None:
    off = FailedAuthLimiter(0)
    for _ in range(100):
        off.failed("192.0.2.1")
    off.check("192.0.2.1")
    bounded = FailedAuthLimiter(1, max_addresses=100)
    for i in range(10_000):
        bounded.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(bounded.windows) == 100


# --- on the app ---------------------------------------------------------------------------------


@pytest.fixture
def app(tmp_path: Path) -> Iterator[FastAPI]:
    app = make_app(tmp_path, auth_failures_per_minute=5, auth_cache_ttl_s=600, trusted_proxies=["10.0.0.0/8"])
    with TestClient(app) as client:
        create_tenant(client, "acme")
        app.state.acme = tenant_key(client, "acme")
        yield app


def client_from(app: FastAPI, address: str) -> TestClient:
    return TestClient(app, client=(address, 40000))


def test_per_address_lockout_on_the_api(app: FastAPI) -> None:
    attacker, neighbour = client_from(app, "192.0.2.1"), client_from(app, "192.0.2.2")
    for i in range(5):
        error(attacker.get("/v1/models", headers={"authorization": f"Bearer tk-guess-{i}"}), 401)
    locked = error(attacker.get("/v1/models", headers={"authorization": "Bearer tk-guess-x"}), 429)
    assert locked["code"] == "too_many_failed_authentications"
    # A key the gateway would have to look up waits too (the lookup is what the lock saves) ...
    r = attacker.get("/v1/models", headers=app.state.acme)
    assert r.status_code == 429 and 0 < int(r.headers["retry-after"]) <= 60
    # ... and the admin key, which an operator may have chosen weak, is not tried at all.
    error(attacker.get("/admin/tenants", headers=ADMIN), 429)
    # Another address is not affected.
    assert neighbour.get("/v1/models", headers=app.state.acme).status_code == 200
    error(neighbour.get("/v1/models", headers={"authorization": "Bearer tk-guess-y"}), 401)
    # Once the key is known (cached), a tenant behind the locked address (a shared NAT or
    # proxy) is served: an anonymous flood cannot lock out working keys.
    assert attacker.get("/v1/models", headers=app.state.acme).status_code == 200


def test_ipv6_failures_count_per_64() -> None:
    from gateway.auth_guard import address_bucket

    assert address_bucket("2001:db8::1") == address_bucket("2001:db8::ffff:1") == "2001:db8::/64"
    assert address_bucket("2001:db8:0:1::1") != address_bucket("2001:db8::1")
    assert address_bucket("::ffff:192.0.2.1") == address_bucket("192.0.2.1") == "192.0.2.1"
    limiter = FailedAuthLimiter(2)
    limiter.failed("2001:db8::1")
    limiter.failed("2001:db8::2")  # another address of the same host
    with pytest.raises(TailorError):
        limiter.check("2001:db8::3")


def test_wrong_admin_keys_count_too(app: FastAPI) -> None:
    client = client_from(app, "192.0.2.3")
    for _ in range(5):
        error(client.get("/admin/tenants", headers={"authorization": "Bearer not-admin"}), 401)
    error(client.get("/admin/tenants", headers=ADMIN), 429)


def test_forwarded_address_is_believed_only_from_a_trusted_proxy(app: FastAPI) -> None:
    proxy, stranger = client_from(app, "10.0.0.5"), client_from(app, "192.0.2.4")
    # Behind the proxy each client has its own count...
    for _ in range(5):
        error(proxy.get("/v1/models", headers={"authorization": "Bearer x", "x-forwarded-for": "203.0.113.1"}), 401)
    error(proxy.get("/v1/models", headers={**app.state.acme, "x-forwarded-for": "203.0.113.1"}), 429)
    assert proxy.get("/v1/models", headers={**app.state.acme, "x-forwarded-for": "203.0.113.2"}).status_code == 200
    # ...while a caller that is not a proxy cannot escape its count by forging the header.
    for i in range(5):
        headers = {"authorization": "Bearer x", "x-forwarded-for": f"203.0.113.{10 + i}"}
        error(stranger.get("/v1/models", headers=headers), 401)
    forged = {"authorization": "Bearer y", "x-forwarded-for": "203.0.113.99"}
    error(stranger.get("/v1/models", headers=forged), 429)


def _request(app: FastAPI, token: str, address: str) -> Request:
    scope: dict[str, Any] = {
        "type": "http",
        "app": app,
        "method": "GET",
        "path": "/v1/models",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
        "client": (address, 40000),
    }
    return Request(scope)


def test_fifty_thousand_random_keys_cost_few_queries_and_keep_the_good_key_cached(app: FastAPI) -> None:
    good = app.state.acme["authorization"].removeprefix("Bearer ")
    queries: list[str] = []
    engine = app.state.services.db.engine

    async def run() -> int:
        await authenticate_request(_request(app, good, "192.0.2.10"))  # cached from here on
        event.listen(engine, "before_cursor_execute", lambda *args: queries.append(args[2]))
        refused = 0
        for i in range(50_000):
            try:
                await authenticate_request(_request(app, f"tk-random-{i}", "192.0.2.66"))
            except TailorError as exc:
                refused += exc.status == 429
        caller = await authenticate_request(_request(app, good, "192.0.2.10"))
        assert caller.tenant_name == "acme"
        return refused

    refused = asyncio.run(run())
    assert refused == 50_000 - 5
    assert len(queries) <= 5, queries  # the five allowed failures, and none for the cached good key
