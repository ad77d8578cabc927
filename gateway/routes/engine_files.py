"""What engines that fetch adapters by name read from a gateway (adapters.engine_source).

Not part of the public API: only the engines' key opens it, and only with
TAILOR_ENGINE_ADAPTER_SOURCE=url.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import FileResponse

from adapters.adapter_source import ROUTE_PREFIX
from adapters.engine_source import check_engine_reads, engine_digest, served_file
from gateway.deps import EngineBasesDep, ServicesDep

router = APIRouter(prefix=ROUTE_PREFIX, include_in_schema=False)


@router.get("/adapters/{name}")
def adapter_digest(name: str, bases: EngineBasesDep, services: ServicesDep) -> dict[str, str]:
    """The digest of the stored version an engine-side adapter name means, for the engine's base."""
    return {"digest": engine_digest(services.db, name, bases, services.base_of)}


# HEAD too: fsspec's HTTP filesystem asks for a file's size before reading it.
@router.api_route("/store/{prefix}/{digest}/{file_name}", methods=["GET", "HEAD"])
def stored_file(prefix: str, digest: str, file_name: str, bases: EngineBasesDep, services: ServicesDep) -> FileResponse:
    """One file of a stored version of the engine's base, as the adapter store lays it out."""
    # Access first: nothing is read or fetched into this host's cache for a version the engine may not read.
    check_engine_reads(services.db, digest, bases, services.base_of)
    return FileResponse(served_file(services.store, prefix, digest, file_name))
