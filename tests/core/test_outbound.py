"""core.outbound: every way a tenant-set URL could reach the operator's own network, refused.

URLs are checked as given (400 naming the field) and again when connecting: the resolver is
replaced by a scripted one where a test needs a name to resolve somewhere, and real
connections go to a small HTTP server on loopback (allowed only by allow-listing it).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from core import outbound
from core.config import Settings
from core.errors import TailorError
from core.outbound import OutboundPolicy

PARAM = "teacher.base_url"
STRICT = OutboundPolicy()
HTTP_OK = OutboundPolicy(allow_http=True)  # so that a refusal below is about the host, not the scheme


# --- a real server on loopback ----------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class LocalServer:
    port: int
    seen: list[tuple[str, str, dict[str, str]]]  # method, path, headers of every request

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def local_server(reply: Callable[[str], Reply]) -> Iterator[LocalServer]:
    """An HTTP server on 127.0.0.1 answering each request (by path) as `reply` says."""
    seen: list[tuple[str, str, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            seen.append((self.command, self.path, dict(self.headers)))
            r = reply(self.path)
            self.send_response(r.status)
            for k, v in {"content-type": "application/json", **r.headers}.items():
                self.send_header(k, v)
            self.send_header("content-length", str(len(r.body)))
            self.end_headers()
            self.wfile.write(r.body)

        do_GET = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LocalServer(server.server_address[1], seen)
    finally:
        server.shutdown()
        server.server_close()


def resolve_as(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """Names in `answers` resolve to those addresses (others as usual); returns the names asked."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            asked.append(host)
            family = {4: socket.AF_INET, 6: socket.AF_INET6}
            return [(family[6 if ":" in a else 4], socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return asked


def refused(policy: OutboundPolicy, url: Any) -> TailorError:
    with pytest.raises(TailorError) as e:
        policy.check_url(url, PARAM)
    assert e.value.status == 400 and e.value.param == PARAM
    assert e.value.body()["error"]["type"] == "invalid_request_error"
    return e.value


# --- when the URL is given ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/v1",
        "http://127.0.0.1:8000/admin/tenants",
        "http://localhost/v1",
        "http://localhost./v1",
        "http://LocalHost:8000",
        "http://api.localhost/v1",
        "http://[::1]/v1",
        "http://[::]/v1",
        "http://0.0.0.0:8000/v1",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[fe80::1]/v1",
        "http://10.1.2.3/v1",
        "http://172.16.0.1/v1",
        "http://192.168.1.10/v1",
        "http://100.64.0.1/v1",
        "http://192.0.0.192/opc/v1/instance/",  # Oracle's metadata service
        "http://224.0.0.1/v1",
        "http://240.0.0.1/v1",
        "http://[::ffff:127.0.0.1]/v1",
        "http://[::ffff:7f00:1]/v1",
        "http://[64:ff9b::7f00:1]/v1",  # NAT64 of 127.0.0.1
        "http://[2002:7f00:1::1]/v1",  # 6to4 of 127.0.0.1
        "http://2130706433/v1",  # 127.0.0.1 as one decimal number
        "http://0x7f000001/v1",
        "http://017700000001/v1",
        "http://0177.0.0.1/v1",
        "http://127.1/v1",
        "http://teacher/v1",  # one label: resolved through the host's search domains
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://printer.local/v1",
        "http://nas.home.arpa/v1",
        "http://1.2.3.4.5/v1",
        "http://exa_mple.com/v1",
        "http://bücher.example/v1",
    ],
)
def test_non_public_hosts_are_refused(url: str) -> None:
    e = refused(HTTP_OK, url)
    assert e.code == "outbound_url_refused"
    assert PARAM in e.message


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://user:pw@teacher.example.com/v1", "user info"),
        ("https://sk-123@teacher.example.com/v1", "user info"),
        ("https://teacher.example.com/v1?", "query"),  # the trailing-? trick: the rest becomes a query
        ("https://teacher.example.com/admin/tenants/x/keys?a=", "query"),
        ("https://teacher.example.com/v1#", "fragment"),
        ("https://teacher.example.com/v1#x", "fragment"),
        ("http://teacher.example.com/v1", "plain http is not allowed"),
        ("ftp://teacher.example.com/v1", "https URL"),
        ("file:///etc/passwd", "https URL"),
        ("teacher.example.com/v1", "https URL"),
        ("https://teacher.example.com:99999/v1", "port"),
        ("https://teacher.example.com\\@evil.example/v1", "backslashes"),
        ("https://teacher.example.com/v1\n/x", "blanks"),
        ("https://teacher.example.com/" + "a" * 3000, "at most"),
        ("", "https URL"),
        ("   ", "https URL"),
        (None, "https URL"),
        (42, "https URL"),
    ],
)
def test_url_forms_that_could_be_abused_are_refused(url: Any, why: str) -> None:
    assert why in refused(STRICT, url).message


def test_public_https_urls_pass_normalised() -> None:
    assert STRICT.check_url(" https://api.openai.com/v1/ ", PARAM) == "https://api.openai.com/v1"
    assert STRICT.check_url("https://teacher.example.com:8443/v1", PARAM) == "https://teacher.example.com:8443/v1"
    assert STRICT.check_url("https://8.8.8.8/v1", PARAM) == "https://8.8.8.8/v1"
    assert STRICT.check_url("https://[2001:4860:4860::8888]/v1", PARAM) == "https://[2001:4860:4860::8888]/v1"
    assert HTTP_OK.check_url("http://teacher.example.com/v1", PARAM) == "http://teacher.example.com/v1"


def test_allow_listed_hosts_pass_but_metadata_never_does(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        outbound_allow_http=True,
        outbound_allow_hosts="127.0.0.1, Teacher.Internal,169.254.169.254",  # type: ignore[arg-type]
    )
    policy = OutboundPolicy.from_settings(settings)
    assert policy.check_url("http://127.0.0.1:8000/v1", PARAM) == "http://127.0.0.1:8000/v1"
    assert policy.check_url("https://teacher.internal/v1", PARAM) == "https://teacher.internal/v1"
    assert refused(policy, "http://169.254.169.254/latest").code == "outbound_url_refused"
    # Only the hosts listed: their neighbours are still refused, and so is user info on a listed one.
    assert refused(policy, "http://127.0.0.2/v1").code == "outbound_url_refused"
    assert refused(policy, "http://localhost/v1").code == "outbound_url_refused"
    assert "user info" in refused(policy, "http://x:y@127.0.0.1/v1").message


def test_settings_default_to_https_and_no_exceptions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert OutboundPolicy.from_settings(Settings(data_dir=tmp_path)) == OutboundPolicy()
    monkeypatch.setenv("TAILOR_OUTBOUND_ALLOW_HTTP", "true")
    monkeypatch.setenv("TAILOR_OUTBOUND_ALLOW_HOSTS", "127.0.0.1,teacher.lan")
    assert OutboundPolicy.from_settings(Settings(data_dir=tmp_path)) == OutboundPolicy(
        allow_http=True, allow_hosts=frozenset({"127.0.0.1", "teacher.lan"})
    )


# --- when it is called ------------------------------------------------------------------------------


def call(policy: OutboundPolicy, url: str) -> httpx.Response:
    with policy.client(timeout=5) as client:
        return client.get(url)


def refused_at_connect(policy: OutboundPolicy, url: str) -> str:
    with pytest.raises(httpx.ConnectError) as e:
        call(policy, url)
    assert outbound.refusal(e.value) is not None
    return outbound.failure_reason(e.value)


def test_a_name_resolving_to_loopback_is_refused_at_connect_time() -> None:
    # The real resolver: localhost is 127.0.0.1 / ::1 on every host.
    reason = refused_at_connect(HTTP_OK, "http://localhost:9/v1")
    assert reason == "refused by the outbound policy: localhost resolves to a private address"


@pytest.mark.parametrize(
    "addresses",
    [
        ["127.0.0.1"],
        ["10.0.0.7"],
        ["169.254.169.254"],
        ["100.64.1.1"],
        ["::1"],
        ["::ffff:127.0.0.1"],
        ["fd00:ec2::254"],
        ["93.184.215.14", "192.168.0.10"],  # one private record among public ones is enough
    ],
)
def test_a_public_looking_name_that_resolves_inside_is_refused(
    monkeypatch: pytest.MonkeyPatch, addresses: list[str]
) -> None:
    resolve_as(monkeypatch, {"teacher.example.com": addresses})
    assert HTTP_OK.check_url("https://teacher.example.com/v1", PARAM)  # passes as given ...
    reason = refused_at_connect(HTTP_OK, "https://teacher.example.com/v1/chat/completions")  # ... not when called
    assert "teacher.example.com" in reason
    assert not any(a in reason for a in addresses)  # the tenant never learns the address


def test_the_connection_goes_to_the_address_that_was_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    # No gap for DNS rebinding: the name is resolved once per connection, by the policy, and
    # the socket is opened to that answer. `.example` names resolve nowhere else, so the
    # request reaching the loopback server proves it; the Host header keeps the name.
    with local_server(lambda _path: Reply()) as server:
        asked = resolve_as(monkeypatch, {"teacher.example": ["127.0.0.1"]})
        policy = OutboundPolicy(allow_http=True, allow_hosts=frozenset({"teacher.example"}))
        r = call(policy, f"http://teacher.example:{server.port}/v1/models")
        assert r.status_code == 200
        assert asked == ["teacher.example"]
        [(_, path, headers)] = server.seen
        assert path == "/v1/models" and headers["Host"] == f"teacher.example:{server.port}"


def test_metadata_addresses_are_refused_even_for_allow_listed_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    resolve_as(monkeypatch, {"teacher.example": ["169.254.169.254"]})
    policy = OutboundPolicy(allow_http=True, allow_hosts=frozenset({"teacher.example"}))
    assert "private address" in refused_at_connect(policy, "http://teacher.example/latest/meta-data/")


def test_allow_listed_loopback_is_reached_and_redirects_are_not_followed() -> None:
    # The server is on loopback, so it must be allow-listed (with http) to be reached at all;
    # its redirect to the metadata service comes back as the 302 it is.
    def reply(path: str) -> Reply:
        if path == "/v1/redirect":
            return Reply(302, b"", {"location": "http://169.254.169.254/latest/meta-data/"})
        return Reply()

    with local_server(reply) as server:
        assert "private address" in refused_at_connect(HTTP_OK, f"{server.url}/v1/models")
        assert server.seen == []
        policy = OutboundPolicy(allow_http=True, allow_hosts=frozenset({"127.0.0.1"}))
        assert call(policy, f"{server.url}/v1/models").status_code == 200
        r = call(policy, f"{server.url}/v1/redirect")
        assert r.status_code == 302 and not r.history
        assert [path for _, path, _ in server.seen] == ["/v1/models", "/v1/redirect"]


def test_proxies_from_the_environment_are_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy would make the connection (and its checks) somebody else's.
    with local_server(lambda _path: Reply()) as server:
        monkeypatch.setenv("HTTP_PROXY", "http://10.255.255.1:3128")
        monkeypatch.setenv("ALL_PROXY", "http://10.255.255.1:3128")
        policy = OutboundPolicy(allow_http=True, allow_hosts=frozenset({"127.0.0.1"}))
        assert call(policy, f"{server.url}/v1/models").status_code == 200


def test_failures_are_described_in_tailors_words() -> None:
    request = httpx.Request("GET", "https://teacher.example.com/v1")
    assert outbound.failure_reason(httpx.ConnectTimeout("10.0.0.1 timed out", request=request)) == (
        "the request timed out"
    )
    assert outbound.failure_reason(httpx.ConnectError("[Errno 111] 10.0.0.1", request=request)) == "could not connect"
    assert outbound.failure_reason(httpx.RemoteProtocolError("garbage", request=request)) == ("the connection failed")
