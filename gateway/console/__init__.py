"""The web console (`/console`): tenants, keys, adapters, jobs, feedback and cost, as pages.

Server-rendered (Jinja2) with two vendored libraries served by Tailor itself, htmx and
Chart.js (static/vendor, versions and checksums in VENDORED.md): no CDN, no build step.
`mount_console(app)` adds it to a gateway app.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .pages import PREFIX
from .routes import router

STATIC_DIR = Path(__file__).with_name("static")

# Only this origin's scripts, styles and requests; no framing, no <base> games, no plugins.
CSP = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}


class ConsoleHeaders:
    """Security headers on every console response (pages, fragments, assets, errors).

    Plain ASGI, not BaseHTTPMiddleware: every other request passes straight through, and
    streamed completions are not buffered.
    """

    def __init__(self, app: ASGIApp, prefix: str = PREFIX) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        prefix = str(scope.get("root_path", "")) + self.prefix if scope["type"] == "http" else ""
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == prefix or path.startswith(prefix + "/")):
            await self.app(scope, receive, send)
            return
        # Pages hold one tenant's data: never stored. Assets may be, revalidated each time.
        cache = "no-cache" if path.startswith(prefix + "/static/") else "no-store"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                headers["cache-control"] = cache
            await send(message)

        await self.app(scope, receive, send_with_headers)


def mount_console(app: FastAPI) -> None:
    """Add the console's routes, its static assets and its response headers to `app`.

    Call it before the app serves its first request (middleware cannot be added later);
    calling it twice does nothing the second time.
    """
    if getattr(app.state, "console_mounted", False):
        return
    app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC_DIR), name="console-static")
    app.add_middleware(ConsoleHeaders)
    app.state.console_mounted = True
