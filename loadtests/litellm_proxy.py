"""LiteLLM's proxy in front of the same engine as Tailor, for comparison.

    python -m loadtests.bench_overhead --litellm /opt/litellm/bin/litellm

LiteLLM is not one of Tailor's dependencies (its pins would move Tailor's): install it in a
virtual environment of its own (`python -m venv /opt/litellm && /opt/litellm/bin/pip install
'litellm[proxy]'`) and pass that environment's `litellm` executable. It runs as its quickstart
runs it: one process, a master key (clients authenticate, as with Tailor), no database (so
no spend logs and no per-key records), the engine as an OpenAI-compatible upstream under the
same model name Tailor serves.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from loadtests.launcher import free_port, progress, wait_healthy


@dataclass(frozen=True)
class LiteLLMProxy:
    url: str
    key: str  # its master key: what clients send
    process: subprocess.Popen[bytes]


def proxy_config(engine_url: str, engine_key: str, model: str, master_key: str) -> dict[str, object]:
    """The proxy's config: one model, served by the engine as an OpenAI-compatible upstream."""
    upstream = {"model": f"openai/{model}", "api_base": f"{engine_url}/v1", "api_key": engine_key}
    return {
        "model_list": [{"model_name": model, "litellm_params": upstream}],
        "general_settings": {"master_key": master_key},
    }


@contextlib.contextmanager
def litellm_proxy(executable: Path, engine_url: str, engine_key: str, model: str) -> Iterator[LiteLLMProxy]:
    """LiteLLM's proxy on a free loopback port in front of `engine_url`; stopped on leaving."""
    if not executable.is_file():
        raise SystemExit(f"no LiteLLM executable at {executable} (see python -m loadtests.litellm_proxy)")
    with tempfile.TemporaryDirectory(prefix="litellm-") as tmp:
        config = Path(tmp) / "config.yaml"
        # JSON is YAML: no YAML writer needed.
        master_key = "sk-" + secrets.token_hex(32)
        config.write_text(json.dumps(proxy_config(engine_url, engine_key, model, master_key)))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = Path(tmp) / "litellm.log"
        command = [str(executable), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        # Its own telemetry off, and no proxy variables of this shell between it and the engine.
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update({"LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR"})
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        try:
            took = wait_healthy("LiteLLM", proc, f"{url}/health/liveliness", log_path)
            progress(f"LiteLLM ready after {took:.0f} s")
            yield LiteLLMProxy(url, master_key, proc)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


if __name__ == "__main__":
    print(__doc__)
