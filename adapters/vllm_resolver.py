"""Tailor's LoRA resolver for vLLM: an engine fetches the adapters it is asked for from Tailor.

vLLM loads it in each of its processes through the `vllm.general_plugins` entry point
(pyproject.toml). It registers only where TAILOR_ADAPTER_SOURCE_URL is set (a gateway's URL
as the engine reaches it), so engines that load adapters by path are untouched. Asked for a
name it does not know, vLLM calls the resolver: it asks the gateway which stored version the
name means and reads that version's files over HTTP (adapters.adapter_source: every file
checked against the version's digest before the copy counts), keeps them under
TAILOR_ADAPTER_CACHE_DIR and hands vLLM the local folder. It sends the engine's own key
(VLLM_API_KEY), the one Tailor calls the engine with.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os

from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

from adapters.adapter_source import SOURCE_ENV, AdapterSource, source_url

RESOLVER_NAME = "tailor"

log = logging.getLogger("tailor.vllm_resolver")


class TailorResolver(LoRAResolver):
    def __init__(self, source: AdapterSource | None = None) -> None:
        self._given = source

    @functools.cached_property
    def source(self) -> AdapterSource:
        # Made on first use: vLLM loads plugins in every process, and only the API server's
        # resolver is ever asked.
        return self._given or AdapterSource.from_env()  # type: ignore[return-value]

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        try:
            path = await asyncio.to_thread(self.source.fetch, lora_name)
        except Exception as exc:  # noqa: BLE001 - vLLM would answer a raised error with a traceback
            # vLLM answers 404 for a name no resolver found; the gateway reads that as a
            # failed load and says so, while the reason is here, in the engine's log.
            log.warning("could not fetch adapter %s: %s: %s", lora_name, type(exc).__name__, exc)
            return None
        if path is None:
            return None
        # vLLM replaces the id with its own counter.
        return LoRARequest(lora_name=lora_name, lora_int_id=1, lora_path=str(path))


def register() -> None:
    """The plugin's entry point: register the resolver where the engine is set up for it."""
    url = os.environ.get(SOURCE_ENV)
    if not url:
        return
    source_url(url)  # a wrong one is refused as the engine starts, not at its first request
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, TailorResolver())
