"""Signing in to the console and out again on the real app: the login form and its token,
admin and tenant keys, the session cookie's flags, and sessions a revoked key ends."""

from __future__ import annotations

from fastapi.testclient import TestClient

from gateway import tenants
from tests.console.console_world import ADMIN_KEY, SignIn, WorldClient, csrf_of, log_in


def test_pages_need_a_session(world: WorldClient) -> None:
    client = TestClient(world[0].app)
    r = client.get("/console/tenants/acme", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    r = client.get("/console/tenants/acme/jobs/x/live", headers={"hx-request": "true"})
    assert r.headers["hx-redirect"] == "/console/login"
    # A POST without a session is sent to sign in too, and changes nothing.
    r = client.post("/console/tenants/acme/adapters/support/promote", data={"version": "2"}, follow_redirects=False)
    assert r.status_code == 303


def test_login_with_admin_key_tenant_key_and_wrong_key(world: WorldClient) -> None:
    w = world[0]
    admin = TestClient(w.app)
    r = log_in(admin, ADMIN_KEY)
    assert r.status_code == 200 and "Operator" in r.text
    assert "acme" in r.text and "beta" in r.text

    tenant = TestClient(w.app)
    r = log_in(tenant, w.keys["acme"])
    assert r.status_code == 200 and "Tenant <strong>acme</strong>" in r.text
    cookie = tenant.cookies.get("tailor_console")
    assert cookie and w.keys["acme"] not in cookie  # the session names the key, never holds it

    stranger = TestClient(w.app)
    r = log_in(stranger, "tk-not-a-key")
    assert r.status_code == 401 and "not valid" in r.text
    assert "tailor_console" not in stranger.cookies
    assert stranger.get("/console", follow_redirects=False).status_code == 303


def test_session_cookie_flags(world: WorldClient) -> None:
    w = world[0]
    client = TestClient(w.app)
    form = client.get("/console/login")
    r = client.post("/console/login", data={"key": ADMIN_KEY, "csrf": csrf_of(form.text)}, follow_redirects=False)
    assert r.status_code == 303
    cookie = next(v for v in r.headers.get_list("set-cookie") if v.startswith("tailor_console="))
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "max-age", "path"} <= flags
    assert "samesite=strict" in cookie.lower() and "path=/console" in cookie.lower()
    assert "Max-Age=28800" in cookie


def test_login_form_needs_its_token(world: WorldClient) -> None:
    client = TestClient(world[0].app)
    client.get("/console/login")
    r = client.post("/console/login", data={"key": ADMIN_KEY, "csrf": "forged"})
    assert r.status_code == 400 and "expired" in r.text
    assert "tailor_console" not in client.cookies


def test_logout_ends_the_session(sign_in: SignIn) -> None:
    client = sign_in(ADMIN_KEY)
    page = client.get("/console")
    r = client.post("/console/logout", data={"csrf": csrf_of(page.text)})
    assert str(r.url).endswith("/console/login")
    assert client.get("/console", follow_redirects=False).status_code == 303


def test_revoked_key_ends_its_session_at_the_next_request(world: WorldClient, sign_in: SignIn) -> None:
    w = world[0]
    new = tenants.create_key(w.services.db, w.acme.id, name="short-lived")
    client = sign_in(new.secret)
    assert client.get("/console/tenants/acme").status_code == 200
    tenants.revoke_key(w.services.db, new.info.id)
    assert client.get("/console/tenants/acme", follow_redirects=False).status_code == 303
