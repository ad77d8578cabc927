"""The console (`/console`) on the real app with seeded data: sign-in, tenant isolation,
CSRF, actions through the promotion and key functions (audited), every page, chart JSON,
headers, and no URL outside Tailor in anything it serves."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from adapters import promotion, registry
from core.models import AuditEvent
from gateway import tenants
from gateway.console import CSP
from tests.console.console_world import ADMIN_KEY, SignIn, World, WorldClient, console_app, csrf_of, log_in, seed
from tests.pg import create_database
from trainer.feedback import record_feedback

STATIC = Path(__file__).resolve().parents[2] / "gateway" / "console" / "static"


def audit_events(w: World, action: str) -> list[AuditEvent]:
    with w.services.db.session() as s:
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))
        s.expunge_all()
    return rows


def chart_json(html: str, chart_id: str) -> dict:  # type: ignore[type-arg]
    match = re.search(rf'<script type="application/json" id="{chart_id}-data">(.*?)</script>', html, re.S)
    assert match, f"no chart {chart_id}"
    return json.loads(match.group(1))  # type: ignore[no-any-return]


def key_id_of(w: World, tenant: str) -> str:
    caller = tenants.authenticate(w.services.db, w.keys[tenant])
    assert caller is not None
    return caller.key_id


# --- isolation --------------------------------------------------------------------------------


def test_tenant_sees_only_its_own_data(world: WorldClient, sign_in: SignIn) -> None:
    w = world[0]
    acme = sign_in(w.keys["acme"])
    overview = acme.get("/console").text
    assert "acme" in overview and ">beta<" not in overview
    for path in (
        "/console/tenants/beta",
        f"/console/tenants/{w.beta.id}",
        "/console/tenants/beta/adapters/helper",
        "/console/tenants/acme/adapters/helper",  # beta's adapter name under acme
        "/console/tenants/beta/jobs",
        f"/console/tenants/beta/jobs/{w.beta_job}",
        f"/console/tenants/acme/jobs/{w.beta_job}",
        f"/console/tenants/acme/jobs/{w.beta_job}/live",
        "/console/tenants/beta/feedback",
    ):
        r = acme.get(path)
        assert r.status_code == 404, path
        assert "text/html" in r.headers["content-type"]
    cost = acme.get("/console/cost", params={"tenant": "beta"}).text  # ignored for tenants
    assert "helper" not in cost and "support" in cost


def test_tenant_cannot_act_on_another_tenant(world: WorldClient, sign_in: SignIn) -> None:
    w = world[0]
    acme = sign_in(w.keys["acme"])
    csrf = csrf_of(acme.get("/console").text)
    before = registry.get_adapter(w.services.db, w.beta.id, "helper")
    for path, data in (
        ("/console/tenants/beta/adapters/helper/promote", {"version": "1"}),
        ("/console/tenants/beta/adapters/helper/rollback", {}),
        ("/console/tenants/acme/adapters/helper/promote", {"version": "1"}),
        (f"/console/tenants/beta/keys/{key_id_of(w, 'beta')}/revoke", {}),
    ):
        r = acme.post(path, data={"csrf": csrf, **data})
        assert r.status_code == 404, path
    for action in ("revoke", "rotate"):  # beta's key under acme: tenants manage no keys at all
        r = acme.post(f"/console/tenants/acme/keys/{key_id_of(w, 'beta')}/{action}", data={"csrf": csrf})
        assert r.status_code == 403, action
    assert acme.post("/console/tenants", data={"csrf": csrf, "name": "sneaky"}).status_code == 403
    assert registry.get_adapter(w.services.db, w.beta.id, "helper") == before
    assert tenants.authenticate(w.services.db, w.keys["beta"]) is not None
    assert all(t.name != "sneaky" for t in tenants.list_tenants(w.services.db))


def test_every_post_needs_the_csrf_token(world: WorldClient, sign_in: SignIn) -> None:
    w = world[0]
    acme = sign_in(w.keys["acme"])
    key_id = key_id_of(w, "acme")
    active = promotion.active_version(w.services.db, w.acme.id, "support")
    for path, data in (
        ("/console/tenants/acme/adapters/support/promote", {"version": "2"}),
        ("/console/tenants/acme/adapters/support/canary", {"version": "2", "percent": "10"}),
        ("/console/tenants/acme/adapters/support/canary/stop", {}),
        ("/console/tenants/acme/adapters/support/rollback", {}),
        ("/console/tenants/acme/keys", {"name": "x"}),
        (f"/console/tenants/acme/keys/{key_id}/revoke", {}),
        (f"/console/tenants/acme/keys/{key_id}/rotate", {}),
        ("/console/tenants", {"name": "nope"}),
        ("/console/logout", {}),
    ):
        for token in ({}, {"csrf": "wrong"}):
            r = acme.post(path, data={**data, **token})
            assert r.status_code == 403, (path, token)
    assert promotion.active_version(w.services.db, w.acme.id, "support") == active
    assert tenants.authenticate(w.services.db, w.keys["acme"]) is not None


# --- actions ----------------------------------------------------------------------------------


def test_promote_canary_and_rollback_from_the_console(world: WorldClient, sign_in: SignIn) -> None:
    w = world[0]
    acme = sign_in(w.keys["acme"])
    page = acme.get("/console/tenants/acme/adapters/support")
    assert page.status_code == 200
    assert 'data-confirm="Promote version 2 of support?' in page.text
    csrf = csrf_of(page.text)
    actor = f"console:key:{key_id_of(w, 'acme')}"
    base = "/console/tenants/acme/adapters/support"

    r = acme.post(f"{base}/canary", data={"csrf": csrf, "version": "2", "percent": "25"})
    assert r.status_code == 200 and "Canary set" in r.text
    info = registry.get_adapter(w.services.db, w.acme.id, "support")
    assert (info.canary_version, info.canary_fraction) == (2, 0.25)

    promoted = len(audit_events(w, "adapter.promote"))
    r = acme.post(f"{base}/promote", data={"csrf": csrf, "version": "2"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"{base}?done=adapter.promote"
    active = promotion.active_version(w.services.db, w.acme.id, "support")
    assert active is not None and active.version == 2
    events = audit_events(w, "adapter.promote")
    assert len(events) == promoted + 1
    event = events[-1]
    assert (event.actor, event.tenant_id, event.target) == (actor, w.acme.id, "support")
    assert event.before["active_version"] == 1 and event.after["active_version"] == 2  # type: ignore[index]
    lineage = {v.version: v for v in promotion.lineage(w.services.db, w.acme.id, "support")}
    assert lineage[2].promoted_by == actor and lineage[1].state == "retired"
    shown = acme.get(r.headers["location"]).text
    assert "Promoted:" in shown and re.search(r'id="version-2">.*?badge-active', shown, re.S)

    r = acme.post(f"{base}/rollback", data={"csrf": csrf})
    assert r.status_code == 200 and "Rolled back" in r.text
    assert promotion.active_version(w.services.db, w.acme.id, "support").version == 1  # type: ignore[union-attr]
    assert audit_events(w, "adapter.rollback")[-1].actor == actor

    # A refused change is shown on the page, with the promotion function's own words.
    r = acme.post(f"{base}/promote", data={"csrf": csrf, "version": "9"})
    assert r.status_code == 404 and "has no version 9" in r.text and 'role="alert"' in r.text


def test_operator_manages_tenants_and_keys(world: WorldClient, sign_in: SignIn) -> None:
    w = world[0]
    admin = sign_in(ADMIN_KEY)
    csrf = csrf_of(admin.get("/console").text)

    r = admin.post("/console/tenants", data={"csrf": csrf, "name": "gamma"})
    assert r.status_code == 200 and "Tenant gamma" in r.text and "Tenant created." in r.text
    gamma = tenants.find_tenant(w.services.db, "gamma")
    assert audit_events(w, "tenant.create")[-1].actor == "console:admin"
    r = admin.post("/console/tenants", data={"csrf": csrf, "name": "gamma"})
    assert r.status_code == 409 and "already exists" in r.text

    r = admin.post("/console/tenants/gamma/keys", data={"csrf": csrf, "name": "ci", "expires_days": ""})
    secret = re.search(r'value="(tk-[^"]+)"', r.text).group(1)  # type: ignore[union-attr]
    caller = tenants.authenticate(w.services.db, secret)
    assert caller is not None and caller.tenant_id == gamma.id
    assert "no-store" in r.headers["cache-control"]
    assert audit_events(w, "key.create")[-1].target == caller.key_id

    r = admin.post(f"/console/tenants/gamma/keys/{caller.key_id}/rotate", data={"csrf": csrf, "grace_seconds": "0"})
    rotated = re.search(r'value="(tk-[^"]+)"', r.text).group(1)  # type: ignore[union-attr]
    assert tenants.authenticate(w.services.db, secret) is None
    new_caller = tenants.authenticate(w.services.db, rotated)
    assert new_caller is not None and audit_events(w, "key.rotate")[-1].actor == "console:admin"

    r = admin.post(f"/console/tenants/gamma/keys/{new_caller.key_id}/revoke", data={"csrf": csrf})
    assert r.status_code == 200 and "Key revoked" in r.text
    assert tenants.authenticate(w.services.db, rotated) is None
    assert audit_events(w, "key.revoke")[-1].target == new_caller.key_id


def test_tenant_session_cannot_mint_or_change_keys(world: WorldClient, sign_in: SignIn) -> None:
    """As in the API, only the admin key manages keys: a key minted from a tenant session
    would outlive the revocation of the key that signed in."""
    w = world[0]
    acme = sign_in(w.keys["acme"])
    page = acme.get("/console/tenants/acme").text
    assert "Create a key" not in page and '/keys"' not in page
    assert "/rotate" not in page and "/revoke" not in page
    own = key_id_of(w, "acme")
    keys_before = tenants.list_keys(w.services.db, w.acme.id)
    created_before = len(audit_events(w, "key.create"))
    csrf = csrf_of(page)
    for path, data in (
        ("/console/tenants/acme/keys", {"name": "batch", "expires_days": "30"}),
        (f"/console/tenants/acme/keys/{own}/rotate", {"grace_seconds": "0"}),
        (f"/console/tenants/acme/keys/{own}/revoke", {}),
    ):
        r = acme.post(path, data={"csrf": csrf, **data})
        assert r.status_code == 403 and "tk-" not in r.text, path
    assert tenants.list_keys(w.services.db, w.acme.id) == keys_before
    assert len(audit_events(w, "key.create")) == created_before
    assert tenants.authenticate(w.services.db, w.keys["acme"]) is not None


def test_operator_sees_the_key_controls(sign_in: SignIn) -> None:
    page = sign_in(ADMIN_KEY).get("/console/tenants/acme").text
    assert "Create a key" in page and "/rotate" in page and "/revoke" in page


def test_a_cookie_captured_before_sign_out_is_refused_after_it(world: WorldClient, sign_in: SignIn) -> None:
    w = world[0]
    for key in (ADMIN_KEY, w.keys["acme"]):
        client = sign_in(key)
        captured = client.cookies.get("tailor_console")
        assert captured
        r = client.post("/console/logout", data={"csrf": csrf_of(client.get("/console").text)})
        assert str(r.url).endswith("/console/login")
        replay = TestClient(w.app, cookies={"tailor_console": captured})
        assert replay.get("/console", follow_redirects=False).status_code == 303, key


# --- pages ----------------------------------------------------------------------------------


def _pages(w: World) -> list[str]:
    return [
        "/console",
        "/console/tenants/acme",
        "/console/tenants/acme/adapters/support",
        "/console/tenants/acme/adapters/faq",
        "/console/tenants/acme/jobs",
        f"/console/tenants/acme/jobs/{w.trained_job}",
        f"/console/tenants/acme/jobs/{w.running_job}",
        f"/console/tenants/acme/jobs/{w.distill_job}",
        f"/console/tenants/acme/jobs/{w.running_job}/live",
        "/console/tenants/acme/feedback",
        "/console/tenants/acme/feedback?adapter=support&rating=bad&correction=yes",
        "/console/cost",
        "/console/cost?days=7",
    ]


@pytest.mark.parametrize("who", ["admin", "acme"])
def test_every_page_renders(world: WorldClient, sign_in: SignIn, who: str) -> None:
    w = world[0]
    client = sign_in(ADMIN_KEY if who == "admin" else w.keys["acme"])
    pages = _pages(w) + (["/console/cost?tenant=beta", "/console/tenants/beta"] if who == "admin" else [])
    for path in pages:
        r = client.get(path)
        assert r.status_code == 200, (path, r.text[:500])
        assert r.headers["content-type"].startswith("text/html")
        if not path.endswith("/live"):
            assert "<main" in r.text and "<h1" in r.text and 'lang="en"' in r.text


@pytest.mark.postgres
def test_every_page_renders_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    """The console's own queries (feedback, judged versions) on PostgreSQL too."""
    app = console_app(tmp_path, database_url=create_database(postgres_url, "console"))
    with TestClient(app) as client:
        w = seed(app, tmp_path)
        assert log_in(client, ADMIN_KEY).status_code == 200
        for path in _pages(w):
            r = client.get(path)
            assert r.status_code == 200, (path, r.text[:500])
        filtered = client.get("/console/tenants/acme/feedback", params={"rating": "bad", "correction": "yes"})
        assert "Your order ships on Monday." in filtered.text


def test_job_page_shows_loss_evaluation_and_differing_examples(world: WorldClient, sign_in: SignIn) -> None:
    w = world[0]
    html = sign_in(w.keys["acme"]).get(f"/console/tenants/acme/jobs/{w.trained_job}").text
    loss = chart_json(html, "loss-chart")
    assert loss["type"] == "line" and loss["labels"] == list(range(1, 25))
    assert len(loss["datasets"]) == 1 and len(loss["datasets"][0]["data"]) == 24
    quality = chart_json(html, "quality-chart")
    assert quality["labels"] == ["Exact match", "Token F1", "Judge win rate"]
    assert [d["label"] for d in quality["datasets"]] == ["Baseline", "Candidate"]
    assert quality["datasets"][1]["data"] == [0.67, 0.81, 0.7] and (quality["y_min"], quality["y_max"]) == (0, 1)
    assert chart_json(html, "perplexity-chart")["datasets"][1]["data"] == [3.2]
    assert "Returns close after 30 days." in html and "It left the depot today." in html
    assert "Hello! How can I help?" not in html  # the same answer from both is not a difference
    assert 'role="img"' in html and "Show the data as a table" in html
    assert "hx-trigger" not in html  # finished: no polling


def test_running_job_polls_and_a_finished_one_reloads(world: WorldClient, sign_in: SignIn) -> None:
    w = world[0]
    acme = sign_in(w.keys["acme"])
    page = acme.get(f"/console/tenants/acme/jobs/{w.running_job}").text
    assert 'hx-trigger="every 2s"' in page and 'aria-live="polite"' in page
    assert "step 3 of 40" in page
    live = acme.get(f"/console/tenants/acme/jobs/{w.running_job}/live", headers={"hx-request": "true"})
    assert live.status_code == 200 and 'hx-swap-oob="innerHTML"' in live.text and "<html" not in live.text
    done = acme.get(f"/console/tenants/acme/jobs/{w.trained_job}/live", headers={"hx-request": "true"})
    assert done.headers["hx-refresh"] == "true"


def test_distillation_job_and_savings(world: WorldClient, sign_in: SignIn) -> None:
    w = world[0]
    acme = sign_in(w.keys["acme"])
    html = acme.get(f"/console/tenants/acme/jobs/{w.distill_job}").text
    assert "prompt tokens saved per request (95%)" in html and "82%" in html
    cost = acme.get("/console/cost?days=7").text
    row = re.search(r"<th scope=\"row\">faq v1</th>(.*?)</tr>", cost, re.S)
    assert row, "no savings row for faq v1"
    cells = re.findall(r'<td class="num">([^<]*)</td>', row.group(1))
    saved, requests, tokens = (int(c.replace(",", "")) for c in cells[:3])
    assert saved == 840 and tokens == 840 * requests and requests > 0


def test_cost_charts_are_per_day(world: WorldClient, sign_in: SignIn) -> None:
    html = sign_in(ADMIN_KEY).get("/console/cost?days=7").text
    cost, tokens, latency = (chart_json(html, c) for c in ("cost-chart", "tokens-chart", "latency-chart"))
    assert len(cost["labels"]) == 7 and cost["stacked"] and cost["type"] == "bar"
    names = {d["label"] for d in cost["datasets"]}
    assert {"acme/support", "acme/faq", "acme/tiny-base", "beta/helper"} <= names
    assert all(len(d["data"]) == 7 and all(v is not None for v in d["data"]) for d in tokens["datasets"])
    assert {"acme p50", "acme p95", "beta p50", "beta p95"} <= {d["label"] for d in latency["datasets"]}


def test_feedback_filters(world: WorldClient, sign_in: SignIn) -> None:
    acme = sign_in(world[0].keys["acme"])
    corrected = acme.get("/console/tenants/acme/feedback", params={"rating": "bad", "correction": "yes"}).text
    assert "Your order ships on Monday." in corrected and "badge-good" not in corrected.split('id="recent"')[1]
    good = acme.get("/console/tenants/acme/feedback", params={"rating": "good", "adapter": "support"}).text
    table = good.split('id="feedback-results"')[1]
    assert "badge-good" in table and "badge-bad" not in table and "Question" in table
    none = acme.get("/console/tenants/acme/feedback", params={"adapter": "faq"}).text
    assert "No feedback matches the filter" in none
    signal = chart_json(good, "signal-chart")
    assert len(signal["labels"]) == 14 and signal["y_max"] == 1
    assert any(d["label"].startswith("support v1") for d in signal["datasets"])


def test_stored_text_is_escaped(world: WorldClient, sign_in: SignIn) -> None:
    w = world[0]
    record_feedback(
        w.services.db, w.acme.id, interaction_id="chatcmpl-seed-acme-support-0-0", rating="bad",
        correction="<script>alert(1)</script>",
    )  # fmt: skip
    html = sign_in(w.keys["acme"]).get("/console/tenants/acme/feedback").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html


# --- headers, assets, no external URLs -------------------------------------------------------


def test_security_headers_on_pages_assets_and_errors(world: WorldClient, sign_in: SignIn) -> None:
    client = sign_in(ADMIN_KEY)
    for path in ("/console", "/console/login", "/console/static/console.js", "/console/tenants/nope"):
        r = client.get(path)
        assert r.headers["content-security-policy"] == CSP, path
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
    assert client.get("/console").headers["cache-control"] == "no-store"
    assert client.get("/console/static/console.css").headers["cache-control"] == "no-cache"
    assert "content-security-policy" not in client.get("/health").headers  # only the console's own


_URL = re.compile(r"https?://", re.I)
_LICENSE_COMMENT = re.compile(r"/\*!.*?\*/", re.S)
_SOURCE_MAP = re.compile(r"^//# sourceMappingURL=.*$", re.M)
_SVG_NAMESPACE = 'xmlns="http://www.w3.org/2000/svg"'  # a name, never fetched


def test_nothing_served_points_outside_tailor(world: WorldClient, sign_in: SignIn) -> None:
    w = world[0]
    client = sign_in(ADMIN_KEY)
    assets: set[str] = set()
    for path in [*_pages(w), "/console/login", "/console/tenants/beta"]:
        html = client.get(path).text
        assert not _URL.search(html), (path, _URL.search(html))
        assets |= set(re.findall(r'(?:src|href)="(/console/static/[^"]+)"', html))
    assert {
        "/console/static/console.css",
        "/console/static/console.js",
        "/console/static/vendor/htmx-2.0.11/htmx.min.js",
        "/console/static/vendor/chart.js-4.6.1/chart.umd.min.js",
    } <= assets
    for path in assets:
        r = client.get(path)
        assert r.status_code == 200, path
        text = _SOURCE_MAP.sub("", _LICENSE_COMMENT.sub("", r.text)).replace(_SVG_NAMESPACE, "")
        assert not _URL.search(text), (path, text[max(0, _URL.search(text).start() - 80) :][:200])  # type: ignore[union-attr]
    # No template pulls anything from elsewhere either (fonts, images, scripts).
    for template in (STATIC.parent / "templates").glob("*.html"):
        assert not _URL.search(template.read_text()), template


def test_vendored_files_match_their_recorded_checksums() -> None:
    recorded = re.findall(r"^([0-9a-f]{64})  (\S+)$", (STATIC.parent / "VENDORED.md").read_text(), re.M)
    assert len(recorded) == 2
    for digest, name in recorded:
        assert hashlib.sha256((STATIC / "vendor" / name).read_bytes()).hexdigest() == digest, name
    for folder in (STATIC / "vendor").iterdir():
        assert any(f.name.startswith("LICENSE") for f in folder.iterdir()), folder
