"""What engines that fetch adapters by name read from a gateway (adapters.engine_source).

Not part of the public API: only the engines' key opens it, and only with
TAILOR_ENGINE_ADAPTER_SOURCE=url.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import FileResponse

from adapters.adapter_source import ROUTE_PREFIX
from adapters.engine_source import engine_digest, served_file
from gateway.deps import EngineDep, ServicesDep

router = APIRouter(prefix=ROUTE_PREFIX, dependencies=[EngineDep], include_in_schema=False)


@router.get("/adapters/{name}")
def adapter_digest(name: str, services: ServicesDep) -> dict[str, str]:
    """The digest of the stored version an engine-side adapter name means."""
    return {"digest": engine_digest(services.db, name)}


# HEAD too: fsspec's HTTP filesystem asks for a file's size before reading it.
@router.api_route("/store/{prefix}/{digest}/{file_name}", methods=["GET", "HEAD"])
def stored_file(prefix: str, digest: str, file_name: str, services: ServicesDep) -> FileResponse:
    """One file of a stored version, as the adapter store lays it out."""
    return FileResponse(served_file(services.store, prefix, digest, file_name))
