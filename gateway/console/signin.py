"""Signing in with an API key and out again: the login form, its one-time token, the
failed-attempt limit shared with the API, and the session cookie."""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, Request
from starlette.responses import HTMLResponse, Response

from core.errors import TailorError
from gateway.deps import client_address, failed_auth_limiter

from . import auth
from .access import Poster
from .pages import base_path, console_router, cookie_args, redirect, render, services_of

router = console_router()


def _login_page(request: Request, *, status: int = 200, error: str | None = None) -> HTMLResponse:
    settings = services_of(request).settings
    token, signed = auth.new_login_token(settings)
    response = render(request, "login.html", None, status=status, login_token=token, failed=bool(error), error=error)
    login_path = f"{base_path(request)}/login"
    response.set_cookie(auth.LOGIN_COOKIE, signed, max_age=auth.LOGIN_MAX_AGE_S, **cookie_args(request, login_path))
    return response


@router.get("/login")
def login_form(request: Request) -> HTMLResponse:
    return _login_page(request)


@router.post("/login")
def login(request: Request, key: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = "") -> Response:
    services = services_of(request)
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
    response = redirect(request, "")
    session = auth.start_session(services.db, services.settings, user)
    response.set_cookie(
        auth.SESSION_COOKIE, session, max_age=auth.SESSION_MAX_AGE_S, **cookie_args(request, base_path(request))
    )
    response.delete_cookie(auth.LOGIN_COOKIE, **cookie_args(request, f"{base_path(request)}/login"))
    return response


@router.post("/logout")
def logout(request: Request, user: Poster) -> Response:
    auth.end_session(services_of(request).db, user)
    response = redirect(request, "/login")
    response.delete_cookie(auth.SESSION_COOKIE, **cookie_args(request, base_path(request)))
    return response
