"""How model graders reach a model: a `ModelCaller` the caller of `grade` passes in.

The gateway passes one that answers with the tenant's own models through its engine pool
(gateway.graders); a trainer passes one over its own engine. Either may first hand names the
operator configured (`TAILOR_GRADER_MODEL_ENDPOINTS`) to `ExternalModels`: OpenAI-compatible
endpoints, reached through core.outbound's policy. A tenant names a model, never a URL.

Those endpoints are the operator's, shared by every tenant, so each call is bounded: an
endpoint may be kept to some tenants (`tenants`; to any other the name is not there), at most
`concurrency` calls run at once per process, on threads of their own (a slow endpoint holds
none of the default executor's), and `max_tokens` is clamped to `max_tokens` (the server's
TAILOR_MAX_OUTPUT_TOKENS). A failure tells the tenant only that it failed; the endpoint's
host and answer go to the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import httpx

from core import outbound
from core.config import GraderModelEndpoint, Settings
from core.errors import TailorError
from core.outbound import OutboundPolicy
from trainer.graders.result import TokenUsage

JSON = dict[str, Any]
MAX_REPLY_BYTES = 1 << 20
log = logging.getLogger("tailor.graders")


@dataclass(frozen=True)
class ModelReply:
    text: str
    usage: TokenUsage
    model: str  # the name the grader asked for
    refusal: str | None = None


class ModelCaller(Protocol):
    async def __call__(self, model: str, body: JSON) -> ModelReply:
        """A chat completion of `body` (messages, sampling, response_format) from `model`.
        Raises TailorError: 4xx when the model cannot be used at all, 5xx/429 when it failed."""
        ...


class NamedModels(ModelCaller, Protocol):
    """Models of some names only (ExternalModels, or a caller wrapping them)."""

    def handles(self, name: str) -> bool: ...


def reply_of(model: str, body: Mapping[str, Any]) -> ModelReply:
    """The reply in an OpenAI chat completion body."""
    try:
        message = body["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise TailorError(
            502, f"The grader model {model!r} sent no chat completion.", code="model_grader_error"
        ) from None
    usage = body.get("usage") or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return ModelReply(
        text=message.get("content") or "",
        usage=TokenUsage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0, cached),
        model=model,
        refusal=message.get("refusal"),
    )


@cache
def _threads(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grader-endpoint")


@dataclass
class ExternalModels:
    """The operator's named endpoints; `handles(name)` says whether a name is one of them for
    `tenant_id` (None: only endpoints open to every tenant)."""

    endpoints: Mapping[str, GraderModelEndpoint]
    policy: OutboundPolicy
    timeout_s: float = 60.0
    transport: httpx.BaseTransport | None = None  # tests: replaces the network, not the URL check
    tenant_id: str | None = None
    max_tokens: int | None = None
    concurrency: int = 4

    @classmethod
    def from_settings(cls, settings: Settings, tenant_id: str | None = None) -> ExternalModels:
        policy = OutboundPolicy.from_settings(settings)
        return cls(
            settings.grader_model_endpoints,
            policy,
            settings.grader_model_timeout_s,
            tenant_id=tenant_id,
            max_tokens=settings.max_output_tokens,
            concurrency=settings.grader_model_concurrency,
        )

    def handles(self, name: str) -> bool:
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            return False
        return endpoint.tenants is None or (self.tenant_id is not None and self.tenant_id in endpoint.tenants)

    async def __call__(self, model: str, body: JSON) -> ModelReply:
        if not self.handles(model):
            raise TailorError(404, f"The model {model!r} does not exist.", code="model_not_found", param="grader.model")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_threads(self.concurrency), self._call, model, self._clamped(body))

    def _clamped(self, body: JSON) -> JSON:
        if self.max_tokens is None:
            return body
        return {**body, "max_tokens": min(int(body.get("max_tokens") or self.max_tokens), self.max_tokens)}

    def _call(self, model: str, body: JSON) -> ModelReply:
        endpoint = self.endpoints[model]
        try:
            base_url = self.policy.check_url(endpoint.base_url, "grader.model")
        except TailorError:
            # The operator's URL, not the tenant's: the tenant learns only that it failed.
            log.warning("grader model %r: its endpoint URL is refused by the outbound policy", model)
            raise _failed(model) from None
        host = httpx.URL(base_url).host
        headers = {"Accept-Encoding": "identity"}
        if endpoint.api_key is not None:
            headers["Authorization"] = f"Bearer {endpoint.api_key.get_secret_value()}"
        payload = {**body, "model": endpoint.model or model}
        client = self.policy.client(transport=self.transport, timeout=self.timeout_s, headers=headers)
        try:
            with client, client.stream("POST", f"{base_url}/chat/completions", json=payload) as r:
                if r.status_code != 200:
                    raise _failed(model, f"{host} answered HTTP {r.status_code}")
                raw = b""
                for chunk in r.iter_bytes():  # counted as decoded: a compressed bomb stops too
                    raw += chunk
                    if len(raw) > MAX_REPLY_BYTES:
                        raise _failed(model, f"{host} answered more than {MAX_REPLY_BYTES} bytes")
        except httpx.HTTPError as exc:
            raise _failed(model, f"{host} is unreachable: {outbound.failure_reason(exc)}") from None
        try:
            return reply_of(model, json.loads(raw))
        except ValueError:
            raise _failed(model, f"{host} sent no JSON") from None


def _failed(model: str, detail: str | None = None) -> TailorError:
    # Tailor's words only, and not the operator's host or the endpoint's answer: those are logged.
    if detail is not None:
        log.warning("grader model %r: %s", model, detail)
    return TailorError(502, f"The grader model {model!r} failed; try again later.", code="model_grader_error")


@dataclass
class RoutedModels:
    """Operator-configured names go to `external`; every other name to `own` (the tenant's models)."""

    own: ModelCaller
    external: NamedModels

    async def __call__(self, model: str, body: JSON) -> ModelReply:
        if self.external.handles(model):
            return await self.external(model, body)
        return await self.own(model, body)
