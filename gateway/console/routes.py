"""The console's pages and actions, under `/console`.

Thin on purpose: each page reads through gateway.console.queries (the JSON API's own
functions), shapes with gateway.console.views and renders a template; each action calls
the function the API route calls, which records it in the audit log as for the API (actor
"console:admin" or "console:key:<id>"), and forgets cached lookups (`services.changed()`).

Every POST needs the session's CSRF token and re-checks who may act: a tenant acts on its
own tenant only (anything else is a 404, as in the API), operators on any; only operators
create tenants and create, rotate or revoke keys (the API's rule: only the admin key
manages keys, so a key never mints another that outlives it). Errors render as HTML pages, never as the API's JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from starlette.responses import HTMLResponse, RedirectResponse, Response

from adapters import promotion, registry
from adapters.registry import AdapterInfo
from core.errors import TailorError, not_found
from core.ids import utcnow
from core.states import TERMINAL_JOB_STATUSES, UNSERVABLE_VERSION_STATES
from gateway import audit, tenants
from gateway.deps import client_address, failed_auth_limiter
from gateway.services import Services
from gateway.tenants import TenantInfo
from trainer import job_records, jobs

from . import auth, queries, views
from .auth import ConsoleUser

TEMPLATES_DIR = Path(__file__).with_name("templates")
_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
    autoescape=jinja2.select_autoescape(default_for_string=True),
    # A misspelt name fails the page (and its test) instead of rendering as nothing.
    undefined=jinja2.StrictUndefined,
)
_env.filters.update(views.FILTERS)
# Which versions the adapter page offers to promote or canary.
_env.globals["unservable"] = UNSERVABLE_VERSION_STATES
templates = Jinja2Templates(env=_env)

JOBS_PAGE = 50
EVENTS_SHOWN = 12
COST_DAYS = (7, 30, 90)

# ?done=<action> after a redirect: fixed sentences, so no text of the URL reaches the page.
NOTICES = {
    "tenant.create": "Tenant created.",
    "key.revoke": "Key revoked: requests with it are refused from now on.",
    "adapter.promote": "Promoted: the version now serves all of this adapter's traffic.",
    "adapter.canary.start": "Canary set: the version now takes its share of the traffic.",
    "adapter.canary.stop": "Canary stopped.",
    "adapter.rollback": "Rolled back to the version that served before.",
}


# --- errors, login redirects, rendering ------------------------------------------------


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")) + "/console"


def _services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def render(request: Request, name: str, user: ConsoleUser | None, *, status: int = 200, **context: Any) -> HTMLResponse:
    base = _base(request)
    values: dict[str, Any] = {
        "user": user,
        "base": base,
        "static": f"{base}/static",
        "nav": "",
        "tenant": None,
        "notice": NOTICES.get(request.query_params.get("done", "")),
        "error": None,
        "now": utcnow(),
    }
    values.update(context)
    return templates.TemplateResponse(request, name, values, status_code=status)


def _error_page(request: Request, status: int, message: str) -> HTMLResponse:
    heading = {401: "Not signed in", 403: "Not allowed", 404: "Not found"}.get(status, "Something went wrong")
    return render(request, "error.html", None, status=status, heading=heading, message=message)


def _to_login(request: Request) -> Response:
    target = f"{_base(request)}/login"
    if request.headers.get("hx-request"):
        # An htmx poll cannot follow a redirect into a whole page: ask it to navigate.
        response: Response = Response(status_code=200, headers={"HX-Redirect": target})
    else:
        response = RedirectResponse(target, status_code=303)
    response.delete_cookie(auth.SESSION_COOKIE, path=_base(request), httponly=True, samesite="strict")
    return response


class ConsoleRoute(APIRoute):
    """Turns a missing session into the login page and errors into HTML pages."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except auth.LoginRequired:
                return _to_login(request)
            except TailorError as exc:
                return _error_page(request, exc.status, exc.message)
            except RequestValidationError:
                return _error_page(request, 400, "Some fields of the form are missing or not valid.")

        return guarded


router = APIRouter(prefix="/console", include_in_schema=False, route_class=ConsoleRoute)


# --- who is asking --------------------------------------------------------------------


def get_user(request: Request) -> ConsoleUser:
    services = _services(request)
    return auth.current_user(services.db, services.settings, request.cookies.get(auth.SESSION_COOKIE))


User = Annotated[ConsoleUser, Depends(get_user)]


def get_poster(user: User, csrf: Annotated[str, Form()] = "") -> ConsoleUser:
    """The user of a state-changing request, once its form carried the session's CSRF token."""
    auth.check_csrf(user.csrf, csrf)
    return user


Poster = Annotated[ConsoleUser, Depends(get_poster)]


def get_tenant(tenant: str, request: Request, user: User) -> TenantInfo:
    """The `{tenant}` of the path (name or id), if this user may see it; else 404 as in the API."""
    try:
        found = tenants.find_tenant(_services(request).db, tenant)
    except TailorError:
        found = None
    if found is None or not user.may_see(found.id):
        raise not_found(f"No tenant {tenant!r}.", code="tenant_not_found")
    return found


Tenant = Annotated[TenantInfo, Depends(get_tenant)]


def _cookie_args(request: Request, path: str) -> dict[str, Any]:
    return {"path": path, "httponly": True, "samesite": "strict", "secure": request.url.scheme == "https"}


# --- sign in and out ----------------------------------------------------------------------


def _login_page(request: Request, *, status: int = 200, error: str | None = None) -> HTMLResponse:
    settings = _services(request).settings
    token, signed = auth.new_login_token(settings)
    response = render(request, "login.html", None, status=status, login_token=token, failed=bool(error), error=error)
    login_path = f"{_base(request)}/login"
    response.set_cookie(auth.LOGIN_COOKIE, signed, max_age=auth.LOGIN_MAX_AGE_S, **_cookie_args(request, login_path))
    return response


@router.get("/login")
def login_form(request: Request) -> HTMLResponse:
    return _login_page(request)


@router.post("/login")
def login(request: Request, key: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = "") -> Response:
    services = _services(request)
    if not auth.check_login_token(services.settings, request.cookies.get(auth.LOGIN_COOKIE), csrf):
        return _login_page(request, status=400, error="The sign-in form expired; please sign in again.")
    # A wrong key here is a failed authentication like one on the API: counted per address.
    limiter, address = failed_auth_limiter(request), client_address(request)
    try:
        limiter.check(address)
    except TailorError as exc:
        return _login_page(request, status=exc.status, error=exc.message)
    user = auth.login(services.db, services.settings, key)
    if user is None:
        limiter.failed(address)
        return _login_page(request, status=401, error="That key is not valid: it is unknown, revoked or expired.")
    response = RedirectResponse(_base(request), status_code=303)
    session = auth.start_session(services.db, services.settings, user)
    response.set_cookie(
        auth.SESSION_COOKIE, session, max_age=auth.SESSION_MAX_AGE_S, **_cookie_args(request, _base(request))
    )
    response.delete_cookie(auth.LOGIN_COOKIE, **_cookie_args(request, f"{_base(request)}/login"))
    return response


@router.post("/logout")
def logout(request: Request, user: Poster) -> Response:
    auth.end_session(_services(request).db, user)
    response = RedirectResponse(f"{_base(request)}/login", status_code=303)
    response.delete_cookie(auth.SESSION_COOKIE, **_cookie_args(request, _base(request)))
    return response


# --- overview and tenants -------------------------------------------------------------------


def _overview(request: Request, user: ConsoleUser, *, status: int = 200, error: str | None = None) -> HTMLResponse:
    rows = queries.overview(_services(request), None if user.is_admin else user.tenant_id)
    return render(request, "overview.html", user, status=status, nav="overview", rows=rows, error=error)


@router.get("")
def overview(request: Request, user: User) -> HTMLResponse:
    return _overview(request, user)


@router.post("/tenants")
def create_tenant(request: Request, user: Poster, name: Annotated[str, Form()] = "") -> Response:
    user.require_admin()
    services = _services(request)
    try:
        created = tenants.create_tenant(services.db, name.strip())
    except TailorError as exc:
        return _overview(request, user, status=exc.status, error=exc.message)
    audit.tenant_created(services.db, user.actor, created)
    return RedirectResponse(f"{_base(request)}/tenants/{created.name}?done=tenant.create", status_code=303)


def _tenant_page(
    request: Request, user: ConsoleUser, owner: TenantInfo, *, status: int = 200, error: str | None = None
) -> HTMLResponse:
    detail = queries.tenant_detail(_services(request), owner)
    return render(request, "tenant.html", user, status=status, nav="tenant", tenant=owner, detail=detail, error=error)


@router.get("/tenants/{tenant}")
def tenant_page(request: Request, user: User, owner: Tenant) -> HTMLResponse:
    return _tenant_page(request, user, owner)


def _owned_key(request: Request, owner: TenantInfo, key_id: str) -> tenants.KeyInfo:
    key = next((k for k in tenants.list_keys(_services(request).db, owner.id) if k.id == key_id), None)
    if key is None:
        raise not_found(f"No key {key_id!r}.", code="key_not_found")
    return key


def _key_page(
    request: Request, user: ConsoleUser, owner: TenantInfo, new: tenants.NewKey, *, rotated: bool
) -> HTMLResponse:
    heading = "Key rotated" if rotated else "Key created"
    return render(
        request,
        "key_secret.html",
        user,
        nav="tenant",
        tenant=owner,
        heading=heading,
        key=new.info,
        secret=new.secret,
        rotated=rotated,
    )


@router.post("/tenants/{tenant}/keys")
def create_key(
    request: Request,
    user: Poster,
    owner: Tenant,
    name: Annotated[str, Form(max_length=64)] = "",
    expires_days: Annotated[int | None, Form(ge=1, le=3650)] = None,
) -> Response:
    user.require_admin()  # as in the API: only the admin key manages keys
    services = _services(request)
    expires_at = utcnow() + timedelta(days=expires_days) if expires_days else None
    new = tenants.create_key(services.db, owner.id, name=name.strip() or None, expires_at=expires_at)
    audit.key_created(services.db, user.actor, new.info)
    return _key_page(request, user, owner, new, rotated=False)


@router.post("/tenants/{tenant}/keys/{key_id}/revoke")
def revoke_key(request: Request, user: Poster, owner: Tenant, key_id: str) -> Response:
    user.require_admin()
    services = _services(request)
    _owned_key(request, owner, key_id)
    before = audit.key_state(services.db, key_id)
    info = tenants.revoke_key(services.db, key_id)
    audit.key_revoked(services.db, user.actor, before, info)
    services.changed()
    return RedirectResponse(f"{_base(request)}/tenants/{owner.name}?done=key.revoke#keys", status_code=303)


@router.post("/tenants/{tenant}/keys/{key_id}/rotate")
def rotate_key(
    request: Request,
    user: Poster,
    owner: Tenant,
    key_id: str,
    grace_seconds: Annotated[int, Form(ge=0, le=tenants.MAX_GRACE_SECONDS)] = 0,
) -> Response:
    user.require_admin()
    services = _services(request)
    _owned_key(request, owner, key_id)
    before = audit.key_state(services.db, key_id)
    try:
        new = tenants.rotate_key(services.db, key_id, grace_seconds=grace_seconds)
    except TailorError as exc:
        return _tenant_page(request, user, owner, status=exc.status, error=exc.message)
    audit.key_rotated(services.db, user.actor, key_id, before, new.info, grace_seconds=grace_seconds)
    services.changed()
    return _key_page(request, user, owner, new, rotated=True)


# --- adapters -----------------------------------------------------------------------------


def _adapter_page(
    request: Request, user: ConsoleUser, owner: TenantInfo, name: str, *, status: int = 200, error: str | None = None
) -> HTMLResponse:
    detail = queries.adapter_detail(_services(request), owner.id, name)
    return render(request, "adapter.html", user, status=status, nav="tenant", tenant=owner, detail=detail, error=error)


@router.get("/tenants/{tenant}/adapters/{name}")
def adapter_page(request: Request, user: User, owner: Tenant, name: str) -> HTMLResponse:
    return _adapter_page(request, user, owner, name)


def _change_adapter(
    request: Request,
    user: ConsoleUser,
    owner: TenantInfo,
    name: str,
    action: str,
    change: Callable[[], AdapterInfo],
) -> Response:
    """Run one promotion call (audited by the call itself, as in the API), and show the adapter again."""
    services = _services(request)
    try:
        change()
    except TailorError as exc:  # a refused change (no such version, nothing to roll back to; unknown names: 404)
        return _adapter_page(request, user, owner, name, status=exc.status, error=exc.message)
    services.changed()
    return RedirectResponse(f"{_base(request)}/tenants/{owner.name}/adapters/{name}?done={action}", status_code=303)


@router.post("/tenants/{tenant}/adapters/{name}/promote")
def promote(request: Request, user: Poster, owner: Tenant, name: str, version: Annotated[int, Form()]) -> Response:
    db = _services(request).db
    return _change_adapter(
        request,
        user,
        owner,
        name,
        "adapter.promote",
        lambda: promotion.promote(db, owner.id, name, version, actor=user.actor),
    )


@router.post("/tenants/{tenant}/adapters/{name}/canary")
def start_canary(
    request: Request,
    user: Poster,
    owner: Tenant,
    name: str,
    version: Annotated[int, Form()],
    percent: Annotated[float, Form(gt=0, lt=100)],
) -> Response:
    db = _services(request).db
    return _change_adapter(
        request,
        user,
        owner,
        name,
        "adapter.canary.start",
        lambda: promotion.start_canary(db, owner.id, name, version, percent / 100, actor=user.actor),
    )


@router.post("/tenants/{tenant}/adapters/{name}/canary/stop")
def stop_canary(request: Request, user: Poster, owner: Tenant, name: str) -> Response:
    db = _services(request).db
    return _change_adapter(
        request,
        user,
        owner,
        name,
        "adapter.canary.stop",
        lambda: promotion.stop_canary(db, owner.id, name, actor=user.actor),
    )


@router.post("/tenants/{tenant}/adapters/{name}/rollback")
def rollback(request: Request, user: Poster, owner: Tenant, name: str) -> Response:
    db = _services(request).db
    return _change_adapter(
        request,
        user,
        owner,
        name,
        "adapter.rollback",
        lambda: promotion.rollback(db, owner.id, name, actor=user.actor),
    )


# --- jobs ---------------------------------------------------------------------------------


@router.get("/tenants/{tenant}/jobs")
def jobs_page(
    request: Request, user: User, owner: Tenant, after: Annotated[str | None, Query(max_length=64)] = None
) -> HTMLResponse:
    page, has_more = jobs.list_jobs(_services(request).db, owner.id, after=after, limit=JOBS_PAGE)
    return render(request, "jobs.html", user, nav="jobs", tenant=owner, jobs=page, has_more=has_more)


def _live_context(job: jobs.JobInfo, events: list[job_records.EventInfo]) -> dict[str, Any]:
    return {
        "job": job,
        "progress": views.progress(job, events),
        "loss": views.loss_chart(events),
        "events": list(reversed(events))[:EVENTS_SHOWN],
        "event_count": len(events),
    }


@router.get("/tenants/{tenant}/jobs/{job_id}")
def job_page(request: Request, user: User, owner: Tenant, job_id: str) -> HTMLResponse:
    detail = queries.job_detail(_services(request), owner.id, job_id)
    return render(
        request,
        "job.html",
        user,
        nav="jobs",
        tenant=owner,
        fragment=False,
        evaluation=views.evaluation_view(detail.evaluation) if detail.evaluation else None,
        examples=views.differing_examples(detail.report),
        distillation=views.distillation_view(detail.job),
        **_live_context(detail.job, detail.events),
    )


@router.get("/tenants/{tenant}/jobs/{job_id}/live")
def job_live(request: Request, user: User, owner: Tenant, job_id: str) -> Response:
    """The polled part of a job page; once the job has ended, the whole page reloads to show
    its evaluation (and polling stops, since the reloaded page does not poll)."""
    job, events = queries.job_live(_services(request), owner.id, job_id)
    if job.status in TERMINAL_JOB_STATUSES and request.headers.get("hx-request"):
        return Response(status_code=200, headers={"HX-Refresh": "true"})
    return render(request, "_job_live.html", user, tenant=owner, fragment=True, **_live_context(job, events))


# --- feedback -----------------------------------------------------------------------------


@router.get("/tenants/{tenant}/feedback")
def feedback_page(
    request: Request,
    user: User,
    owner: Tenant,
    adapter: Annotated[str, Query(max_length=64)] = "",
    rating: Annotated[str, Query(max_length=8)] = "",
    correction: Annotated[str, Query(max_length=8)] = "",
) -> HTMLResponse:
    services = _services(request)
    filters = queries.FeedbackFilter(
        adapter=adapter or None,
        rating=rating if rating in ("good", "bad") else None,
        correction=correction if correction in ("yes", "no") else None,
    )
    signal = queries.signal_by_day(services, owner.id)
    return render(
        request,
        "feedback.html",
        user,
        nav="feedback",
        tenant=owner,
        filters=filters,
        items=queries.recent_feedback(services, owner.id, filters),
        page_size=queries.FEEDBACK_PAGE,
        adapters=registry.list_adapters(services.db, owner.id),
        drift=queries.drift_all(services, owner.id),
        signal_chart=views.signal_chart(signal.series, signal.days) if signal.series else None,
    )


# --- cost ---------------------------------------------------------------------------------


@router.get("/cost")
def cost_page(
    request: Request,
    user: User,
    tenant: Annotated[str, Query(max_length=64)] = "",
    days: Annotated[int, Query()] = 30,
) -> HTMLResponse:
    services = _services(request)
    days = days if days in COST_DAYS else 30
    if not user.is_admin:
        scope: list[TenantInfo] | None = [tenants.find_tenant(services.db, user.tenant_id or "")]
    elif tenant:
        scope = [get_tenant(tenant, request, user)]
    else:
        scope = None
    until = queries.today()
    since = until - timedelta(days=days - 1)
    data = queries.cost(services, scope, since, until)
    labels = views.day_labels(since, until)
    multi = scope is None
    cost_chart, tokens_chart = views.cost_charts(data.by_day_model, labels, with_tenant=multi)
    return render(
        request,
        "cost.html",
        user,
        nav="cost",
        tenant=scope[0] if scope and user.is_admin else None,
        scope_name=scope[0].name if scope else None,
        all_tenants=tenants.list_tenants(services.db) if user.is_admin else [],
        days=days,
        data=data,
        multi=multi,
        cost_chart=cost_chart,
        tokens_chart=tokens_chart,
        latency_chart=views.latency_chart(data.by_day, labels, with_tenant=multi),
    )
