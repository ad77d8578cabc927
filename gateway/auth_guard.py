"""What a caller who has not authenticated yet can cost: bounded key caches and a per-address
limit on failed authentications.

`KeyCache` replaces one shared cache for known and unknown keys: unknown keys are
remembered apart, in a bounded LRU of their hashes, so any number of distinct random
tokens can neither flush the keys that work nor grow memory.

`FailedAuthLimiter` counts failed authentications per client address and answers 429 once
an address has failed `per_minute` times in its current minute. It lives in this process's
memory on purpose: the shared-store limits (gateway.limits) are per tenant, and a caller
who has not authenticated has no tenant. Per replica is enough to make guessing keys slow,
and a refusal costs no database round trip. The address is the peer's, or the one a
trusted proxy forwarded (TAILOR_TRUSTED_PROXIES, applied by ProxyHeadersMiddleware).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cachetools import LRUCache

from core.errors import TailorError
from core.ids import hash_key
from gateway.tenants import Caller

V = TypeVar("V")

KNOWN_KEYS_MAX = 50_000
UNKNOWN_KEYS_MAX = 100_000
ADDRESSES_MAX = 100_000
WINDOW_S = 60.0


@dataclass(frozen=True)
class _Entry(Generic[V]):
    expires: float
    value: V


class KeyCache:
    """Key lookups by the key's hash: working keys and unknown ones in separate bounded LRUs.

    Same interface as gateway.services.TTLCache (`get`, `get_stale`, `put`, `clear`), so
    it stands in for the key cache there. A value that is a `Caller` is a working key;
    anything else (the lookup's "no such key" marker) goes to the unknown side.
    """

    def __init__(
        self,
        ttl_s: float,
        *,
        known_max: int = KNOWN_KEYS_MAX,
        unknown_max: int = UNKNOWN_KEYS_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self.known: LRUCache[str, _Entry[object]] = LRUCache(maxsize=known_max)
        self.unknown: LRUCache[str, _Entry[object]] = LRUCache(maxsize=unknown_max)

    def _find(self, secret: str) -> _Entry[object] | None:
        digest = hash_key(secret)
        return self.known.get(digest) or self.unknown.get(digest)

    def get(self, secret: str) -> object | None:
        hit = self._find(secret)
        return None if hit is None or hit.expires < self.clock() else hit.value

    def get_stale(self, secret: str, grace_s: float) -> object | None:
        """The last answer even if expired, up to `grace_s` past its expiry (database outages)."""
        hit = self._find(secret)
        return None if hit is None or hit.expires + grace_s < self.clock() else hit.value

    def put(self, secret: str, value: object) -> None:
        digest = hash_key(secret)
        entry = _Entry(self.clock() + self.ttl_s, value)
        if isinstance(value, Caller):
            self.unknown.pop(digest, None)
            self.known[digest] = entry
        else:
            self.known.pop(digest, None)
            self.unknown[digest] = entry

    def clear(self) -> None:
        self.known.clear()
        self.unknown.clear()


@dataclass
class _Window:
    ends: float
    failures: int


def address_bucket(address: str) -> str:
    """What failures are counted per: the address, or its /64 for IPv6 (one host usually
    holds a whole /64, and would otherwise get a fresh count per address it rotates to)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class FailedAuthLimiter:
    """At most `per_minute` failed authentications per client address and minute (0: no limit)."""

    def __init__(
        self, per_minute: int, *, max_addresses: int = ADDRESSES_MAX, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_minute = per_minute
        self.clock = clock
        # Bounded: a flood of addresses forgets the oldest counts instead of growing memory.
        self.windows: LRUCache[str, _Window] = LRUCache(maxsize=max_addresses)

    def check(self, address: str) -> None:
        """Raise 429 (with Retry-After) while `address` is over its failures for this minute."""
        if self.per_minute <= 0:
            return
        window = self.windows.get(address_bucket(address))
        now = self.clock()
        if window is None or window.ends <= now or window.failures < self.per_minute:
            return
        wait = max(1, math.ceil(window.ends - now))
        raise TailorError(
            429,
            f"Too many failed authentication attempts from your address. Please try again in {wait} s.",
            code="too_many_failed_authentications",
            headers={"Retry-After": str(wait)},
        )

    def failed(self, address: str) -> None:
        if self.per_minute <= 0:
            return
        now = self.clock()
        bucket = address_bucket(address)
        window = self.windows.get(bucket)
        if window is None or window.ends <= now:
            self.windows[bucket] = _Window(ends=now + WINDOW_S, failures=1)
        else:
            window.failures += 1
