"""Connections whose every operation ends by the request's deadline.

httpx's timeouts are per operation: a server sending one byte (of the headers or of the
body) just before each read times out would hold a request forever. A teacher thread sets
`budget` for the request it makes; every socket operation of a `budgeted_transport` is cut
to what is left of it, and ends at once when the request is aborted.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpcore
import httpx

from core.outbound import OutboundPolicy


class _Budget(threading.local):
    """The request a teacher thread is making: when its time is up, and whether to give up."""

    deadline: float | None = None
    abort: threading.Event | None = None


budget = _Budget()


def _bounded(timeout: float | None, timed_out: type[Exception]) -> float | None:
    """One socket operation's timeout, cut to what is left of the request's whole budget."""
    deadline, abort = budget.deadline, budget.abort
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0 or (abort is not None and abort.is_set()):
        raise timed_out("the teacher request's time is up")
    return left if timeout is None else min(timeout, left)


class _BudgetedStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the request's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self.inner.start_tls(ssl_context, server_hostname, _bounded(timeout, httpcore.ConnectTimeout))
        return _BudgetedStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _BudgetedBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self.inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        timeout = _bounded(timeout, httpcore.ConnectTimeout)
        return _BudgetedStream(self.inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def budgeted_transport(policy: OutboundPolicy) -> httpx.BaseTransport:
    """The policy's transport (every connection checked), its connections bounded by _Budget."""
    transport = policy.transport()
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if not isinstance(backend, httpcore.NetworkBackend):
        # httpx or httpcore changed shape: better no teacher than one without a deadline.
        raise RuntimeError("cannot bound teacher connections: unexpected httpx transport")
    pool._network_backend = _BudgetedBackend(backend)  # type: ignore[union-attr]
    return transport
