"""The console's cookies behind a TLS-terminating proxy: `Secure` when the request came over
https, as the client saw it; X-Forwarded-Proto is believed only from a trusted proxy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.console.console_world import console_app, csrf_of

PROXY, STRANGER = "10.0.0.5", "192.0.2.8"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    app = console_app(tmp_path_factory.mktemp("console-proxy"), trusted_proxies=["10.0.0.0/8"])
    with TestClient(app):
        yield app


def cookies_set(app: FastAPI, peer: str, headers: dict[str, str]) -> dict[str, str]:
    """Sign in as the operator from `peer`; the Set-Cookie headers of the form and the sign-in."""
    client = TestClient(app, client=(peer, 40000), headers=headers)
    form = client.get("/console/login")
    (login_cookie,) = form.headers.get_list("set-cookie")
    # Sent by hand: the test client talks plain http to the app and keeps Secure cookies to itself.
    client.cookies.clear()
    r = client.post(
        "/console/login",
        data={"key": "adm", "csrf": csrf_of(form.text)},
        headers={"cookie": login_cookie.split(";", 1)[0]},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    found = {"tailor_console_login": login_cookie}
    for value in r.headers.get_list("set-cookie"):
        found.setdefault(value.split("=", 1)[0], value)
    return found


def is_secure(cookie: str) -> bool:
    return "secure" in {part.strip().lower() for part in cookie.split(";")}


def test_forged_forwarded_proto_from_an_untrusted_peer_is_ignored(app: FastAPI) -> None:
    cookies = cookies_set(app, STRANGER, {"x-forwarded-proto": "https"})
    assert not is_secure(cookies["tailor_console"]) and not is_secure(cookies["tailor_console_login"])


def test_https_through_a_trusted_proxy_makes_the_cookies_secure(app: FastAPI) -> None:
    cookies = cookies_set(app, PROXY, {"x-forwarded-proto": "https", "x-forwarded-for": "203.0.113.5"})
    assert is_secure(cookies["tailor_console"]) and is_secure(cookies["tailor_console_login"])
    plain = cookies_set(app, PROXY, {"x-forwarded-proto": "http"})
    assert not is_secure(plain["tailor_console"])


def test_failed_console_sign_ins_count_per_address(tmp_path: Path) -> None:
    app = console_app(tmp_path, auth_failures_per_minute=2)
    with TestClient(app):
        guesser, other = TestClient(app, client=(STRANGER, 1)), TestClient(app, client=("192.0.2.9", 1))
        for _ in range(2):
            form = guesser.get("/console/login")
            assert (
                guesser.post("/console/login", data={"key": "tk-guess", "csrf": csrf_of(form.text)}).status_code == 401
            )
        form = guesser.get("/console/login")
        r = guesser.post("/console/login", data={"key": "adm", "csrf": csrf_of(form.text)})
        assert r.status_code == 429 and "Too many failed" in r.text and "tailor_console" not in guesser.cookies
        form = other.get("/console/login")
        assert other.post("/console/login", data={"key": "adm", "csrf": csrf_of(form.text)}).status_code == 200
