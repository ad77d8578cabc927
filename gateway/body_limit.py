"""Request body limits, enforced before and while a body is read.

Every request may send at most TAILOR_MAX_REQUEST_BYTES. Only the upload routes
(`UPLOAD_ROUTES`, multipart bodies) may send up to TAILOR_MAX_UPLOAD_BYTES, and only once
their key was checked: authentication needs nothing but the headers, so an unauthenticated
caller is answered before a byte of its body is read, and what any request can make the
gateway hold before it is authenticated is bounded by TAILOR_MAX_REQUEST_BYTES. Uploads
themselves are parsed by Starlette, which spools file parts to disk past 1 MiB.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import TailorError
from gateway.deps import authenticate_admin, authenticate_request


@dataclass(frozen=True)
class UploadRoute:
    method: str
    path: re.Pattern[str]
    authenticate: Callable[[Request], Awaitable[object]]  # raises TailorError when the key is wrong


# The routes that take multipart uploads, and the key each needs (as its router does).
UPLOAD_ROUTES = (
    UploadRoute("POST", re.compile(r"/v1/adapters"), authenticate_request),
    UploadRoute("POST", re.compile(r"/admin/tenants/[^/]+/adapters"), authenticate_admin),
    UploadRoute("POST", re.compile(r"/v1/files"), authenticate_request),
    UploadRoute("POST", re.compile(r"/v1/feedback/import"), authenticate_request),
)


def upload_route(scope: Scope, routes: tuple[UploadRoute, ...] = UPLOAD_ROUTES) -> UploadRoute | None:
    """The upload route a multipart request is for, if any."""
    content_type = dict(scope["headers"]).get(b"content-type", b"")
    if not content_type.lower().startswith(b"multipart/"):
        return None
    path = scope["path"].removeprefix(scope.get("root_path", "") or "")
    method = scope["method"]
    return next((r for r in routes if r.method == method and r.path.fullmatch(path)), None)


class BodyLimit:
    """Refuse bodies over the limit with 413 before they are read into memory, and
    unauthenticated uploads with the error their route would give, before reading them."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        route = upload_route(scope)
        if route is not None:
            try:
                await route.authenticate(Request(scope))
            except TailorError as exc:
                await _answer(send, exc)
                return
            limit = self.max_upload_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _answer(send, _too_large(limit))
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # An HTTPException: FastAPI turns any other error raised while it reads
                    # the body into a 400 "error parsing the body".
                    raise StarletteHTTPException(413, _too_large(limit).message)
            return message

        await self.app(scope, limited, send)


def _too_large(limit: int) -> TailorError:
    return TailorError(413, f"Request body exceeds {limit} bytes.", code="request_too_large")


async def _answer(send: Send, exc: TailorError) -> None:
    response = JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
