"""A gateway's adapters as an engine reads them (TAILOR_ENGINE_ADAPTER_SOURCE=url): which stored
version a name means, then that version's files, each checked against its digest.

Used inside vLLM's processes by Tailor's resolver plugin (adapters.vllm_resolver), so it
imports nothing of the gateway's: no database, no web framework.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import httpx

from adapters.engines import bearer
from adapters.store import AdapterStore, check_digest

# Where an engine finds a gateway's adapters, under the gateway's URL.
ROUTE_PREFIX = "/internal/engine"
# The engine's environment: a gateway's URL as the engine reaches it, and where it keeps what
# it fetched (default: ~/.cache/tailor/engine-adapters of the engine's user).
SOURCE_ENV = "TAILOR_ADAPTER_SOURCE_URL"
CACHE_ENV = "TAILOR_ADAPTER_CACHE_DIR"

# Engine-side adapter names are Tailor's ids; anything else is never sent on.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# A name the gateway does not know is not asked for again for this long (a caller that
# reaches the engine could otherwise make it ask the gateway for every name it invents).
UNKNOWN_TTL_S = 30.0
_MAX_UNKNOWN = 10_000
# No limit on a whole download (a large adapter on a slow link takes what it takes), but a
# connection that stalls is given up.
_CONNECT_TIMEOUT_S, _READ_TIMEOUT_S = 10.0, 60.0


def source_url(url: str) -> str:
    """`url` (a gateway's, from TAILOR_ADAPTER_SOURCE_URL) without a trailing slash; only http(s)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{SOURCE_ENV} must be an http(s) URL, not {url[:80]!r}")
    return url.rstrip("/")


def private_dir(path: Path) -> Path:
    """`path`, created for this user only; refused if it is a link or someone else's, since a
    copy found there is loaded into the engine."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ValueError(f"{CACHE_ENV} {path} must be a directory of this user, not a link")
    if info.st_mode & 0o002:
        raise ValueError(f"{CACHE_ENV} {path} must not be writable by everyone")
    return path


class AdapterSource:
    """One gateway's adapters: a name's digest, then the version's files, checked and cached."""

    def __init__(self, url: str, key: str | None, cache_dir: Path, client: httpx.Client | None = None) -> None:
        self.url = source_url(url)
        self.headers = bearer(key)
        timeout = httpx.Timeout(_READ_TIMEOUT_S, connect=_CONNECT_TIMEOUT_S)
        self.client = client or httpx.Client(timeout=timeout, trust_env=False)
        self.store = AdapterStore(
            f"{self.url}{ROUTE_PREFIX}/store",
            private_dir(cache_dir),
            headers=self.headers,
            block_size=0,  # files are streamed, not read in ranges
            client_kwargs={
                "timeout": aiohttp.ClientTimeout(
                    total=None, sock_connect=_CONNECT_TIMEOUT_S, sock_read=_READ_TIMEOUT_S
                ),
                "trust_env": False,
            },
        )
        self._unknown: dict[str, float] = {}

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> AdapterSource | None:
        url = env.get(SOURCE_ENV)
        if not url:
            return None
        cache = Path(env.get(CACHE_ENV) or Path.home() / ".cache" / "tailor" / "engine-adapters")
        return cls(url, env.get("VLLM_API_KEY"), cache)

    def fetch(self, name: str) -> Path | None:
        """A local folder with the adapter `name` means, or None when the gateway knows no such name."""
        now = time.monotonic()
        if not _NAME.fullmatch(name) or self._unknown.get(name, 0.0) > now:
            return None
        resp = self.client.get(f"{self.url}{ROUTE_PREFIX}/adapters/{name}", headers=self.headers)
        if resp.status_code == 404:
            if len(self._unknown) >= _MAX_UNKNOWN:
                self._unknown = {n: t for n, t in self._unknown.items() if t > now}
            if len(self._unknown) < _MAX_UNKNOWN:
                self._unknown[name] = now + UNKNOWN_TTL_S
            return None
        resp.raise_for_status()
        body = resp.json()
        if not isinstance(body, dict):
            raise ValueError("the gateway's answer is not a JSON object")
        return self.store.local_path(check_digest(body.get("digest", "")))
