"""Tailor's LoRA resolver for vLLM: an engine fetches the adapters it is asked for from Tailor.

vLLM loads it in each of its processes through the `vllm.general_plugins` entry point
(pyproject.toml). It registers only where TAILOR_ADAPTER_SOURCE_URL is set (a gateway's URL
as the engine reaches it), so engines that load adapters by path are untouched. Asked for a
name it does not know, vLLM calls the resolver: it asks the gateway which stored version the
name means, reads that version's files under the store's own layout over HTTP with
adapters.store (every file checked against the version's digest before the copy counts),
keeps them under TAILOR_ADAPTER_CACHE_DIR and hands vLLM the local folder. It sends the
engine's own key (VLLM_API_KEY), the one Tailor calls the engine with.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
from pathlib import Path

import httpx
from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

from adapters.engine_source import CACHE_ENV, ROUTE_PREFIX, SOURCE_ENV
from adapters.engines import bearer
from adapters.store import AdapterStore, check_digest
from core.errors import TailorError

RESOLVER_NAME = "tailor"
# Engine-side adapter names are Tailor's ids; anything else is never sent on.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_TIMEOUT_S = 30.0

log = logging.getLogger("tailor.vllm_resolver")


class AdapterSource:
    """A gateway's adapters, as an engine reads them: a name's digest, then its checked files."""

    def __init__(self, url: str, key: str | None, cache_dir: Path, client: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self.headers = bearer(key)
        self.client = client or httpx.Client(timeout=_TIMEOUT_S)
        # block_size 0: files are streamed, not read in ranges.
        self.store = AdapterStore(f"{self.url}{ROUTE_PREFIX}/store", cache_dir, headers=self.headers, block_size=0)

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str] = os.environ) -> AdapterSource | None:
        url = env.get(SOURCE_ENV)
        if not url:
            return None
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{SOURCE_ENV} must be an http(s) URL, not {url[:80]!r}")
        cache = Path(env.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "tailor-engine-adapters")
        return cls(url, env.get("VLLM_API_KEY"), cache)

    def fetch(self, name: str) -> Path | None:
        """A local folder with the adapter `name` means, or None when the gateway knows no such name."""
        if not _NAME.fullmatch(name):
            return None
        resp = self.client.get(f"{self.url}{ROUTE_PREFIX}/adapters/{name}", headers=self.headers)
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        digest = check_digest(resp.json().get("digest"))
        return self.store.local_path(digest)


class TailorResolver(LoRAResolver):
    def __init__(self, source: AdapterSource) -> None:
        self.source = source

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        try:
            path = await asyncio.to_thread(self.source.fetch, lora_name)
        except (httpx.HTTPError, TailorError, OSError, ValueError) as exc:
            # vLLM answers 404 for a name no resolver found; the gateway reads that as a
            # failed load and says so, while the reason is here, in the engine's log.
            log.warning("could not fetch adapter %s from %s: %s", lora_name, self.source.url, exc)
            return None
        if path is None:
            return None
        # vLLM replaces the id with its own counter.
        return LoRARequest(lora_name=lora_name, lora_int_id=1, lora_path=str(path))


def register() -> None:
    """The plugin's entry point: register the resolver where the engine is set up for it."""
    source = AdapterSource.from_env()
    if source is not None:
        LoRAResolverRegistry.register_resolver(RESOLVER_NAME, TailorResolver(source))
