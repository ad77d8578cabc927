"""The one policy for URLs a tenant sets and Tailor then calls (a distillation teacher today).

Such a URL runs on Tailor's hosts, inside the operator's network, so without a policy a
tenant could point it at the gateway's own admin API, a database, or a cloud metadata
service. Two checks, both here:

- `OutboundPolicy.check_url` when the URL is given (a 400 naming the field): https only
  (unless `TAILOR_OUTBOUND_ALLOW_HTTP`), no user info, query or fragment (a trailing `?`
  would let the tenant pick the whole path), a public-looking host: no literal address in
  a non-public range, no odd IPv4 spellings (`2130706433`, `0x7f000001`), no `localhost`
  or other names that only ever resolve inside a network.
- `OutboundPolicy.client` when it is called: every connection resolves the host, refuses
  it if any address is non-public, and connects to the address it checked, so a name
  cannot resolve to a public address for the check and a private one for the connection.
  Redirects are not followed.

Hosts on `TAILOR_OUTBOUND_ALLOW_HOSTS` skip the address checks (an operator's own teacher
on the private network); cloud metadata addresses are refused even for them.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from core.config import Settings
from core.errors import bad_request

log = logging.getLogger("tailor.outbound")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_CHARS = 2048
# Instance metadata services (AWS IPv4 and IPv6, ECS task metadata, Oracle, Alibaba). Most
# lie in ranges refused anyway; Oracle's 192.0.0.192 counts as global to `ipaddress`.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "192.0.0.192", "100.100.100.200")
)
# Names that resolve only inside a network or a host (RFC 6761 localhost, RFC 6762 .local,
# RFC 8375 home.arpa, ICANN's .internal, the common localhost.localdomain).
PRIVATE_NAME_SUFFIXES = ("localhost", "local", "internal", "home.arpa", "localdomain", "invalid")
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
# httpx's own defaults, for the pool that replaces its default one.
_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class OutboundRefused(httpcore.ConnectError):
    """A connection the policy refused. Its message is safe to show the tenant: the host
    they gave and why, never the address it resolved to."""


def is_public(ip: IPAddress) -> bool:
    """Whether `ip` is a globally routable unicast address (not metadata).

    Addresses that embed an IPv4 address (IPv4-mapped, 6to4, NAT64) are judged by it too:
    `::ffff:127.0.0.1` reaches loopback just the same.
    """
    if ip in METADATA_ADDRESSES:
        return False
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local:
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in NAT64_PREFIX:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public(embedded)
    return True


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _spells_ipv4(host: str) -> bool:
    # inet_aton takes what URL parsers and resolvers take: 2130706433, 0x7f000001,
    # 017700000001, 127.1. ipaddress only takes the dotted-quad form.
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


def _name_problem(host: str) -> str | None:
    """Why a host name (not an IP literal) is refused, or None."""
    name = host.removesuffix(".")
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return "is not a valid host name (letters, digits and hyphens; use the punycode form of other names)"
    if _spells_ipv4(name):
        return "is an IP address in a non-standard form"
    if len(labels) < 2 or labels[-1].isdigit():
        return "is not a fully qualified public host name"
    if any(name == s or name.endswith("." + s) for s in PRIVATE_NAME_SUFFIXES):
        return "names a local or internal host"
    return None


def _normal_host(host: str) -> str:
    return host.strip("[]").removesuffix(".").lower()


@dataclass(frozen=True)
class OutboundPolicy:
    allow_http: bool = False
    allow_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboundPolicy:
        return cls(
            allow_http=settings.outbound_allow_http,
            allow_hosts=frozenset(_normal_host(h) for h in settings.outbound_allow_hosts),
        )

    def allowed_host(self, host: str) -> bool:
        return _normal_host(host) in self.allow_hosts

    # --- when the URL is given ------------------------------------------------------
    def check_url(self, url: Any, param: str) -> str:
        """The URL, stripped of surrounding blanks and a trailing slash; a 400 naming `param`."""
        schemes = "http(s)" if self.allow_http else "https"
        example = f"{param} must be an {schemes} URL such as https://host/v1"
        if not isinstance(url, str) or not url.strip():
            raise bad_request(f"{example}.", param=param)
        value = url.strip()
        if len(value) > MAX_URL_CHARS or any(c.isspace() or not c.isprintable() or c == "\\" for c in value):
            raise bad_request(f"{example}, at most {MAX_URL_CHARS} characters, no blanks or backslashes.", param=param)
        # Checked on the raw text: urlsplit drops an empty query, and "host/v1?" would let the
        # tenant turn the path Tailor appends into a query of a path of their choosing.
        if "?" in value or "#" in value:
            raise bad_request(f"{example}, without a query (?) or fragment (#).", param=param)
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise bad_request(f"{example}.", param=param)
        if parts.scheme == "http" and not self.allow_http:
            raise bad_request(f"{example}: plain http is not allowed on this server.", param=param)
        if "@" in parts.netloc:
            raise bad_request(f"{example}, without user info (user:password@); send keys as keys.", param=param)
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
        except ValueError:
            raise bad_request(f"{example}: the port is not valid.", param=param) from None
        host = parts.hostname or ""
        problem = self._host_problem(host)
        if problem is not None:
            raise bad_request(f"{param}: the host {host} {problem}.", param=param, code="outbound_url_refused")
        return value.rstrip("/")

    def _host_problem(self, host: str) -> str | None:
        ip = _literal_ip(host)
        if ip in METADATA_ADDRESSES:
            return "is a cloud metadata address"
        if self.allowed_host(host):
            return None
        if ip is None:
            return _name_problem(host)
        return None if is_public(ip) else "is not a public address"

    # --- when it is called ----------------------------------------------------------------
    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to, all checked; refuses the host if any one is not public.

        Refusing on any (not only skipping the bad ones) keeps a name that mixes public and
        private records from being a coin toss between them.
        """
        name = _normal_host(host)
        try:
            infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise httpcore.ConnectError(f"{host} does not resolve") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        allowed = self.allowed_host(name)
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if ip in METADATA_ADDRESSES or not (allowed or is_public(ip)):
                # The operator's log gets the address; the tenant's message does not.
                log.warning("outbound connection to %s refused: it resolves to %s", host, address)
                raise OutboundRefused(f"refused by the outbound policy: {host} resolves to a private address")
        return addresses

    def transport(self) -> httpx.BaseTransport:
        return _PinnedTransport(self)

    def client(self, *, transport: httpx.BaseTransport | None = None, **options: Any) -> httpx.Client:
        """An httpx client whose every connection passes this policy.

        `transport` replaces the network in tests only. No redirects (a 3xx is an answer for
        the caller to report), and no proxies or settings from the environment.
        """
        return httpx.Client(transport=transport or self.transport(), follow_redirects=False, trust_env=False, **options)


class _PinnedBackend(httpcore.SyncBackend):
    """Resolves and checks at connect time, then connects to the checked address itself."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in self.policy.resolve(host, port):
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # getaddrinfo answers with at least one address or raises
        raise failure


class _PinnedTransport(httpx.HTTPTransport):
    """httpx's own transport over a connection pool that connects through `_PinnedBackend`.

    Why a network backend rather than rewriting each request to the checked IP (with the
    name in the Host header and httpx's `sni_hostname` extension): httpcore calls the backend
    with the URL's host once per new connection and then does TLS on that socket with the
    original name, so certificate checks, SNI, the Host header and connection reuse (pooled
    by name) all stay exactly as for any other request, and no request can bypass the check.
    httpx takes no backend argument, so the pool it builds is replaced by an equal one that
    has it.
    """

    def __init__(self, policy: OutboundPolicy) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=_LIMITS.max_connections,
            max_keepalive_connections=_LIMITS.max_keepalive_connections,
            keepalive_expiry=_LIMITS.keepalive_expiry,
            network_backend=_PinnedBackend(policy),
        )


def refusal(exc: BaseException) -> OutboundRefused | None:
    """The policy's refusal behind an httpx error, if that is what it was."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OutboundRefused):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def failure_reason(exc: httpx.HTTPError) -> str:
    """Why a call failed, in Tailor's words: safe to show the tenant (no remote text, no address)."""
    refused = refusal(exc)
    if refused is not None:
        return str(refused)
    if isinstance(exc, httpx.TimeoutException):
        return "the request timed out"
    if isinstance(exc, httpx.ConnectError):
        return "could not connect"
    return "the connection failed"
