"""A stand-in for `python -m vllm.entrypoints.openai.api_server`, run as a real process.

Takes the arguments the supervisor passes to vLLM (only --host, --port and
--served-model-name matter here), binds like vLLM (SO_REUSEADDR, no SO_REUSEPORT), and
like vLLM requires `VLLM_API_KEY` on /v1 routes when it is set. VLLM_FAKE_MODE changes how
it behaves: `serve` (default), `port-taken` (prints Python's bind error and exits 1, as
vLLM does when its port is in use), `crash` (a traceback naming a missing model config),
`no-bind` (stays alive without ever listening), `port-taken-once` (`port-taken` the first
time, when the file VLLM_FAKE_MARKER does not exist yet; `serve` after).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response


def app_for(served_name: str, api_key: str | None) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def require_key(request: Request, call_next):  # type: ignore[no-untyped-def]
        authorized = request.headers.get("authorization") == f"Bearer {api_key}"
        if api_key and request.url.path.startswith("/v1") and not authorized:
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        return await call_next(request)

    @app.get("/health")
    def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    def models() -> dict[str, object]:
        return {"object": "list", "data": [{"id": served_name, "object": "model", "root": "/m", "parent": None}]}

    return app


@contextmanager
def running(port: int, served_name: str, api_key: str | None = None) -> Iterator[str]:
    """This server in its own process on `port` (someone else's engine); yields its URL once it answers."""
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_API_KEY", "VLLM_FAKE_MODE")}
    if api_key:
        env["VLLM_API_KEY"] = api_key
    command = [sys.executable, __file__, "--port", str(port), "--served-model-name", served_name]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "fake engine did not start"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", default="fake-model")
    args, _ = parser.parse_known_args()
    mode = os.environ.get("VLLM_FAKE_MODE", "serve")
    if mode == "port-taken-once":
        marker = os.environ["VLLM_FAKE_MARKER"]
        mode = "serve" if os.path.exists(marker) else "port-taken"
        open(marker, "a").close()
    if mode == "port-taken":
        print("OSError: [Errno 98] Address already in use", file=sys.stderr)
        sys.exit(1)
    if mode == "crash":
        print("OSError: /models/missing does not appear to have a file named config.json", file=sys.stderr)
        sys.exit(1)
    if mode == "no-bind":
        time.sleep(3600)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    config = uvicorn.Config(app_for(args.served_model_name, os.environ.get("VLLM_API_KEY")), log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
