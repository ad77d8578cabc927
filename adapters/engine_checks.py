"""Is the server at an engine's URL the engine Tailor means, set up the way Tailor needs?

The pool runs `find_problem` on every health check. What a passing check guarantees:

- Every engine: `/health` answers 200 (vLLM's engine core is alive; this route has no key, so
  by itself it proves nothing about whose server it is), and `GET /v1/models` sent with the
  engine's key answers 200 and lists `served_name` as a base model. A server started with
  another key answers 401 and is refused; one with another `--served-model-name` is refused.
- Child engines (the supervisor's `owner_check`): the process Tailor spawned is alive, and it
  or one of its children holds the listening socket of the engine's port (checked until seen
  once per process; vLLM binds without SO_REUSEPORT, so while that process lives nobody else
  can listen there). Its key is random per gateway process and reaches it through the
  environment only, so no other client can use its OpenAI API (/v1: completions, adapter
  loads) and Tailor never uses a stranger's server. vLLM leaves a few routes outside /v1
  (/health, /metrics, /tokenize, /invocations) open to local processes: run engines that
  must be closed to the host's other users in their own network namespace or container.
- Operator-run engines, on first contact and whenever one comes back after being down: a
  zero-weight LoRA of exactly the configured maximum rank loads and unloads. That proves LoRA
  is enabled, adapters load at run time, the engine's `--max-lora-rank` is large enough, and
  it can read files from Tailor's adapter cache, which every real adapter load needs too.

Not guaranteed: that an operator-run engine without a key is not shared with others (give it
`--api-key` and Tailor `TAILOR_ENGINE_API_KEY`), or that it serves the same weights as
`TAILOR_BASE_MODEL_PATH` under the expected name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
from pydantic import BaseModel, ValidationError

from core.errors import TailorError

if TYPE_CHECKING:
    from adapters.engines import Engine

# The probe's name on the engine; internal like every lora name.
PROBE_NAME = "tailor-rank-probe"
CHECK_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 120.0
_MAX_NAME = 80


@dataclass(frozen=True)
class Problem:
    """Why an engine takes no traffic."""

    # Short and operator-facing, shown on the unauthenticated /ready: no paths, no secrets.
    reason: str
    # The engine's own words, for the server log only.
    detail: str = ""
    # A setup mismatch (logged as an error) rather than an engine that is not up yet.
    serious: bool = False


@dataclass(frozen=True)
class EngineExpectation:
    """What every engine must serve."""

    served_name: str
    max_lora_rank: int
    # Path (as the engine sees it) of a LoRA of rank `max_lora_rank`; None: no probe.
    probe_adapter: Callable[[], str] | None = None
    # The engines fetch adapters by name from Tailor (TAILOR_ENGINE_ADAPTER_SOURCE=url,
    # adapters.vllm_resolver) instead of loading a path.
    fetches_adapters: bool = False


def load_call(name: str, path: str, *, by_name: bool) -> tuple[str, dict[str, str]]:
    """The engine route and body that make adapter `name` resident on an engine."""
    if by_name:
        # vLLM asks its LoRA resolvers for a name it does not know on any request naming it;
        # tokenizing nothing generates nothing.
        return "/tokenize", {"model": name, "prompt": ""}
    return "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path}


class _ModelCard(BaseModel):
    id: str
    parent: str | None = None


class _ModelList(BaseModel):
    data: list[_ModelCard]


async def find_problem(
    client: httpx.AsyncClient, engine: Engine, expect: EngineExpectation, *, thorough: bool
) -> Problem | None:
    """None when `engine` may take traffic; `thorough` adds the LoRA probe for operator-run engines."""
    if engine.owner_check is not None and (problem := engine.owner_check()) is not None:
        return problem
    try:
        problem = await _answers_health(client, engine) or await _serves_base_model(client, engine, expect)
        if problem is None and thorough and engine.owner_check is None and _probes(expect):
            problem = await _loads_probe(client, engine, expect)
    except httpx.HTTPError as exc:
        return Problem(f"engine {engine.url} is not answering", detail=type(exc).__name__)
    return problem


def _probes(expect: EngineExpectation) -> bool:
    # An engine that fetches adapters by name would fetch the probe from a gateway, and at a
    # cold start no gateway serves yet (each waits for a checked engine): such engines are
    # checked by their first adapter load instead, which fails with the engine's reason logged.
    return expect.probe_adapter is not None and not expect.fetches_adapters


async def _answers_health(client: httpx.AsyncClient, engine: Engine) -> Problem | None:
    resp = await client.get(f"{engine.url}/health", timeout=CHECK_TIMEOUT_S)
    if resp.status_code != 200:
        return Problem(f"engine {engine.url} is not healthy (/health answered {resp.status_code})")
    return None


async def _serves_base_model(client: httpx.AsyncClient, engine: Engine, expect: EngineExpectation) -> Problem | None:
    resp = await client.get(f"{engine.url}/v1/models", headers=engine.headers, timeout=CHECK_TIMEOUT_S)
    if resp.status_code in (401, 403):
        return Problem(
            f"engine {engine.url} refused Tailor's key: it is not Tailor's engine, or TAILOR_ENGINE_API_KEY "
            "is not its --api-key",
            serious=True,
        )
    try:
        resp.raise_for_status()
        models = _ModelList.model_validate_json(resp.content)
    except (httpx.HTTPStatusError, ValidationError):
        return Problem(
            f"engine {engine.url} did not list its models like a vLLM server", detail=resp.text[:300], serious=True
        )
    bases = [card.id for card in models.data if card.parent is None]
    if expect.served_name in bases:
        return None
    served = ", ".join(repr(name[:_MAX_NAME]) for name in bases[:3]) or "no model"
    return Problem(
        f"engine {engine.url} serves {served} but TAILOR_BASE_MODEL_NAME is {expect.served_name!r}", serious=True
    )


async def _loads_probe(client: httpx.AsyncClient, engine: Engine, expect: EngineExpectation) -> Problem | None:
    assert expect.probe_adapter is not None
    rank = expect.max_lora_rank
    try:
        path = await asyncio.to_thread(expect.probe_adapter)
    except (TailorError, OSError) as exc:
        detail = exc.message if isinstance(exc, TailorError) else str(exc)
        return Problem(f"cannot check engine {engine.url}: no test adapter could be written", detail=detail)
    route, body = load_call(PROBE_NAME, path, by_name=False)
    resp = await client.post(f"{engine.url}{route}", json=body, headers=engine.headers, timeout=PROBE_TIMEOUT_S)
    if resp.status_code < 400 or "already been loaded" in resp.text:
        await client.post(
            f"{engine.url}/v1/unload_lora_adapter",
            json={"lora_name": PROBE_NAME},
            headers=engine.headers,
            timeout=PROBE_TIMEOUT_S,
        )
        return None
    if resp.status_code in (404, 405):
        reason = (
            "does not load adapters at run time (start it with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)"
        )
    elif "max_lora_rank" in resp.text:
        reason = (
            f"takes LoRA ranks below {rank}: start it with --max-lora-rank {rank} or lower TAILOR_ENGINE_MAX_LORA_RANK"
        )
    else:
        reason = (
            f"could not load a rank-{rank} test adapter (is --enable-lora set, and can it read Tailor's adapter cache?)"
        )
    return Problem(f"engine {engine.url} {reason}", detail=resp.text[:500], serious=True)
