"""Body limits (gateway.body_limit) on the real app: the upload limit only on the upload
routes and only after their key was checked; every other request, and every request not
authenticated yet, holds at most TAILOR_MAX_REQUEST_BYTES. Raw ASGI calls count exactly
how many bytes the app pulled from `receive`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI

from tests.apputil import ADMIN, TenantsApi, error, make_app, serve_tenants
from tests.gateway.gateway_world import post_scope

MAX_REQUEST = 4_000
MAX_UPLOAD = 200_000
CHUNK = 1_000
BOUNDARY = "tailorboundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
UPLOAD_PATHS = ("/v1/adapters", "/v1/files", "/v1/feedback/import", "/admin/tenants/acme/adapters")
# Multipart bodies to routes that take none; the last is under an upload route's prefix.
OTHER_PATHS = (
    "/v1/chat/completions",
    "/admin/tenants",
    "/v1/fine_tuning/jobs",
    "/console/login",
    "/v1/adapters/support/activate",
)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TenantsApi]:
    tmp = tmp_path_factory.mktemp("body-limit")
    app = make_app(tmp, max_request_bytes=MAX_REQUEST, max_upload_bytes=MAX_UPLOAD, auth_failures_per_minute=0)
    with serve_tenants(app, TenantsApi, ("acme",)) as running:
        yield running


def multipart_body(size: int) -> bytes:
    """A well-formed multipart body of exactly `size` bytes: one file part of filler."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    return head + b"x" * (size - len(head) - len(tail)) + tail


def asgi_post(
    app: FastAPI, path: str, body: bytes, headers: dict[str, str], *, declare_length: bool
) -> tuple[int, dict[str, Any], int]:
    """POST `body` in CHUNK-sized pieces; returns (status, JSON body, bytes the app pulled)."""
    pulled = 0
    pieces = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if not pieces:
            return {"type": "http.disconnect"}
        piece = pieces.pop(0)
        pulled += len(piece)
        return {"type": "http.request", "body": piece, "more_body": bool(pieces)}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    raw = {"content-type": MULTIPART, **headers}
    if declare_length:
        raw["content-length"] = str(len(body))
    asyncio.run(app(post_scope(path, raw, client="192.0.2.7"), receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(payload), pulled


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", UPLOAD_PATHS)
def test_unauthenticated_upload_is_refused_before_its_body_is_read(
    api: TenantsApi, path: str, declare_length: bool
) -> None:
    body = multipart_body(MAX_REQUEST + 1)
    for headers in ({}, {"authorization": "Bearer tk-wrong"}):
        status, payload, pulled = asgi_post(api.app, path, body, headers, declare_length=declare_length)
        assert status == 401, payload
        assert payload["error"]["code"] in ("missing_api_key", "invalid_api_key")
        assert pulled == 0


@pytest.mark.parametrize("path", UPLOAD_PATHS)
def test_a_tenant_key_does_not_open_the_admin_upload_route(api: TenantsApi, path: str) -> None:
    headers = dict(api.keys["acme"]) if path.startswith("/admin") else {"authorization": "Bearer adm"}
    status, _, pulled = asgi_post(api.app, path, multipart_body(MAX_REQUEST + 1), headers, declare_length=False)
    assert status == 401 and pulled == 0


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", OTHER_PATHS)
def test_multipart_elsewhere_is_capped_at_max_request_bytes(api: TenantsApi, path: str, declare_length: bool) -> None:
    body = multipart_body(MAX_UPLOAD - 1)  # under the upload limit: only the request limit refuses it
    for headers in ({}, dict(api.keys["acme"]), ADMIN):
        status, payload, pulled = asgi_post(api.app, path, body, headers, declare_length=declare_length)
        # 413, or the route's own refusal where it checks the key before reading the body.
        assert status in (401, 413), (path, headers, payload)
        assert pulled <= MAX_REQUEST + CHUNK, (path, headers)
        if declare_length:
            assert pulled == 0, (path, headers)  # refused on the declared length alone


def test_multipart_to_a_json_route_is_413_with_the_right_key(api: TenantsApi) -> None:
    body = multipart_body(MAX_UPLOAD - 1)
    status, payload, pulled = asgi_post(api.app, "/v1/chat/completions", body, api.keys["acme"], declare_length=False)
    assert status == 413 and payload["error"]["code"] == "request_too_large"
    assert pulled <= MAX_REQUEST + CHUNK


def test_authenticated_upload_above_the_request_limit_works(api: TenantsApi) -> None:
    line = json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]})
    data = ((line + "\n") * (3 * MAX_REQUEST // len(line))).encode()
    assert MAX_REQUEST < len(data) < MAX_UPLOAD
    r = api.client.post(
        "/v1/files", files={"file": ("train.jsonl", data)}, data={"purpose": "fine-tune"}, headers=api.keys["acme"]
    )
    assert r.status_code == 200, r.text
    assert r.json()["bytes"] == len(data)
    # Above the upload limit it is 413 even with the right key.
    status, payload, pulled = asgi_post(
        api.app, "/v1/files", multipart_body(MAX_UPLOAD + 1), api.keys["acme"], declare_length=False
    )
    assert status == 413 and payload["error"]["code"] == "request_too_large"
    assert pulled <= MAX_UPLOAD + CHUNK


def test_raw_jsonl_import_keeps_the_request_limit(api: TenantsApi) -> None:
    r = api.client.post(
        "/v1/feedback/import",
        content=b"{}\n" * (MAX_REQUEST // 3 + 1),
        headers={**api.keys["acme"], "content-type": "application/jsonl"},
    )
    error(r, 413)
