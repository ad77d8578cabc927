"""What every console page shares: the templates, rendering with the common context, the
router whose routes turn a missing session into the login page and errors into HTML pages,
and the session cookie's flags."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import jinja2
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from starlette.responses import HTMLResponse, RedirectResponse, Response

from core.errors import TailorError
from core.ids import utcnow
from core.states import UNSERVABLE_VERSION_STATES
from gateway.services import Services

from . import auth, views
from .auth import ConsoleUser

PREFIX = "/console"
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

# ?done=<action> after a redirect: fixed sentences, so no text of the URL reaches the page.
NOTICES = {
    "tenant.create": "Tenant created.",
    "key.revoke": "Key revoked: requests with it are refused from now on.",
    "adapter.promote": "Promoted: the version now serves all of this adapter's traffic.",
    "adapter.canary.start": "Canary set: the version now takes its share of the traffic.",
    "adapter.canary.stop": "Canary stopped.",
    "adapter.rollback": "Rolled back to the version that served before.",
}


def base_path(request: Request) -> str:
    return str(request.scope.get("root_path", "")) + PREFIX


def services_of(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def render(request: Request, name: str, user: ConsoleUser | None, *, status: int = 200, **context: Any) -> HTMLResponse:
    base = base_path(request)
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


def redirect(request: Request, path: str) -> RedirectResponse:
    """303 to `path` under the console (a POST's answer: the browser GETs the page)."""
    return RedirectResponse(f"{base_path(request)}{path}", status_code=303)


def cookie_args(request: Request, path: str) -> dict[str, Any]:
    return {"path": path, "httponly": True, "samesite": "strict", "secure": request.url.scheme == "https"}


def _error_page(request: Request, status: int, message: str) -> HTMLResponse:
    heading = {401: "Not signed in", 403: "Not allowed", 404: "Not found"}.get(status, "Something went wrong")
    return render(request, "error.html", None, status=status, heading=heading, message=message)


def _to_login(request: Request) -> Response:
    target = f"{base_path(request)}/login"
    if request.headers.get("hx-request"):
        # An htmx poll cannot follow a redirect into a whole page: ask it to navigate.
        response: Response = Response(status_code=200, headers={"HX-Redirect": target})
    else:
        response = RedirectResponse(target, status_code=303)
    response.delete_cookie(auth.SESSION_COOKIE, path=base_path(request), httponly=True, samesite="strict")
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


def console_router() -> APIRouter:
    """A router for one group of console pages: under /console, out of the OpenAPI document."""
    return APIRouter(prefix=PREFIX, include_in_schema=False, route_class=ConsoleRoute)
