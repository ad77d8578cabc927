"""Check what deploy/'s Kustomize overlays would create (rendered by tests.deploy.rendered).

Each `check_*` takes the rendered objects and returns the problems it found, one line each,
so a test asserts an empty list and a broken manifest's test names what broke.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
from pydantic import ValidationError

from adapters.adapter_source import CACHE_ENV, SOURCE_ENV
from adapters.supervisor import EngineLaunch
from core.config import Settings
from tests.deploy.rendered import (
    CRD_SCHEMAS,
    ENGINE_PLUGIN_ENV,
    GPU,
    KUBERNETES_VERSION,
    Obj,
    _lookup,
    command_line,
    container_env,
    containers,
    engine_containers,
    expand,
    find,
    gateway,
    ident,
    is_engine,
    pod_labels,
    pod_spec,
    selects,
    setting_names,
    settings_from,
    workloads,
)


def _crd_strict(schema: Any) -> Any:
    """Unknown fields refused, as `kubectl apply` does with server-side field validation."""
    if isinstance(schema, list):
        return [_crd_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _crd_strict(v) for k, v in schema.items()}
    open_ended = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and not open_ended:
        out["additionalProperties"] = False
    return out


def check_schemas(objs: list[Obj]) -> list[str]:
    problems = []
    for obj in objs:
        crd = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        try:
            if crd is not None:
                schema = _crd_strict(json.loads(crd.read_text()))
                jsonschema.Draft7Validator(schema).validate(obj)
            else:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except jsonschema.ValidationError as e:
            problems.append(f"{ident(obj)}: {e.message} at {'/'.join(map(str, e.absolute_path))}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{ident(obj)}: {e.message}")
    return problems


def check_selectors(objs: list[Obj]) -> list[str]:
    """Services, budgets and monitors select pods or Services that exist, on ports they have."""
    problems = []
    for w in workloads(objs):
        if not selects(w["spec"]["selector"].get("matchLabels", {}), pod_labels(w)):
            problems.append(f"{ident(w)}: its selector does not match its own pod labels")
    services = [o for o in objs if o["kind"] == "Service"]
    for svc in services:
        pods = [w for w in workloads(objs) if selects(svc["spec"].get("selector", {}), pod_labels(w))]
        if not pods:
            problems.append(f"{ident(svc)}: selects no pods")
        ports = {p.get("name") for w in pods for c in containers(w) for p in c.get("ports", [])}
        ports |= {p["containerPort"] for w in pods for c in containers(w) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            if pods and port.get("targetPort", port["port"]) not in ports:
                problems.append(f"{ident(svc)}: targetPort {port.get('targetPort')} is no port of its pods")
    for sts in (w for w in workloads(objs) if w["kind"] == "StatefulSet"):
        svc = find(objs, "Service", sts["spec"]["serviceName"])
        if svc is None or svc["spec"].get("clusterIP") != "None":
            problems.append(f"{ident(sts)}: serviceName {sts['spec']['serviceName']} is no headless Service")
    for pdb in (o for o in objs if o["kind"] == "PodDisruptionBudget"):
        if not any(selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(w)) for w in workloads(objs)):
            problems.append(f"{ident(pdb)}: selects no pods")
    for hpa in (o for o in objs if o["kind"] == "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if find(objs, target["kind"], target["name"]) is None:
            problems.append(f"{ident(hpa)}: scales {target['kind']}/{target['name']}, which is not defined")
    for mon in (o for o in objs if o["kind"] == "ServiceMonitor"):
        matched = [s for s in services if selects(mon["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        if not matched:
            problems.append(f"{ident(mon)}: selects no Service")
        names = {p.get("name") for s in matched for p in s["spec"]["ports"]}
        for endpoint in mon["spec"]["endpoints"]:
            if matched and endpoint.get("port") not in names:
                problems.append(f"{ident(mon)}: port {endpoint.get('port')} is no port of the Services it selects")
    return problems


def check_references(objs: list[Obj]) -> list[str]:
    """Every Secret, ConfigMap, key, claim, volume and service account named is defined."""
    problems = []
    for w in workloads(objs):
        spec = pod_spec(w)
        account = spec.get("serviceAccountName")
        if account and find(objs, "ServiceAccount", account) is None:
            problems.append(f"{ident(w)}: service account {account} is not defined")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim and find(objs, "PersistentVolumeClaim", claim) is None:
                problems.append(f"{ident(w)}: volume {volume['name']} claims {claim}, which is not defined")
        mounted = set()
        for c in containers(w):
            for source in c.get("envFrom", []):
                for kind, ref in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if ref in source and find(objs, kind, source[ref]["name"]) is None:
                        problems.append(f"{ident(w)}/{c['name']}: envFrom {kind} {source[ref]['name']} is not defined")
            for var in c.get("env", []):
                for source in ("secretKeyRef", "configMapKeyRef"):
                    ref = var.get("valueFrom", {}).get(source)
                    if (
                        ref is not None
                        and not ref.get("optional")
                        and _lookup(objs, source, ref["name"], ref["key"]) is None
                    ):
                        problems.append(
                            f"{ident(w)}/{c['name']}: {var['name']} names {ref['name']}/{ref['key']}, not defined"
                        )
            for mount in c.get("volumeMounts", []):
                mounted.add(mount["name"])
                if mount["name"] not in volumes:
                    problems.append(f"{ident(w)}/{c['name']}: mounts volume {mount['name']}, which is not defined")
        for unused in sorted(set(volumes) - mounted):
            problems.append(f"{ident(w)}: volume {unused} is mounted nowhere")
    return problems


def check_tailor_names(objs: list[Obj]) -> list[str]:
    """Every TAILOR_* variable set anywhere is a setting of core/config.py, or on an engine, one
    that Tailor's vLLM plugin reads."""
    known = setting_names()
    problems = []
    for cm in (o for o in objs if o["kind"] == "ConfigMap"):
        problems += [
            f"{ident(cm)}: {k} is no Tailor setting"
            for k in cm.get("data", {})
            if k.startswith("TAILOR_") and k not in known
        ]
    for w in workloads(objs):
        for c in containers(w):
            names = (known | ENGINE_PLUGIN_ENV) if is_engine(c) else known
            for var in c.get("env", []):
                if var["name"].startswith("TAILOR_") and var["name"] not in names:
                    problems.append(f"{ident(w)}/{c['name']}: {var['name']} is no Tailor setting")
    return problems


def check_settings(objs: list[Obj]) -> list[str]:
    """Tailor's containers start: their environment is valid Settings."""
    problems = []
    for w in workloads(objs):
        for c in containers(w):
            env = container_env(objs, c)
            if is_engine(c) or not any(k.startswith("TAILOR_") for k in env):
                continue
            try:
                settings_from(env)
            except ValidationError as e:
                problems.append(f"{ident(w)}/{c['name']}: {e}")
    return problems


def _port(container: Obj, port: int | str) -> int | None:
    for p in container.get("ports", []):
        if port in (p.get("name"), p["containerPort"]):
            return int(p["containerPort"])
    return None


def check_probes(objs: list[Obj], gateway_paths: set[str]) -> list[str]:
    """The gateway's probes ask its real routes on the port it listens on (TAILOR_PORT):
    liveness /health, readiness /ready; engines are probed on vLLM's /health on their --port."""
    problems = []
    w, c = gateway(objs)
    settings = settings_from(container_env(objs, c))
    wanted = {"livenessProbe": "/health", "readinessProbe": "/ready", "startupProbe": "/health"}
    for probe, path in wanted.items():
        get = c.get(probe, {}).get("httpGet")
        if get is None:
            if probe != "startupProbe":
                problems.append(f"{ident(w)}: no {probe}")
            continue
        if get["path"] != path or get["path"] not in gateway_paths:
            problems.append(f"{ident(w)}: {probe} asks {get['path']}, not the gateway's {path}")
        if _port(c, get["port"]) != settings.port:
            problems.append(f"{ident(w)}: {probe} port {get['port']} is not TAILOR_PORT {settings.port}")
    for w in workloads(objs):
        for c in (c for c in containers(w) if is_engine(c)):
            args = [expand(a, container_env(objs, c)) for a in command_line(c)]
            listen = int(args[args.index("--port") + 1])
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                get = c.get(probe, {}).get("httpGet")
                if get is None or get["path"] != "/health" or _port(c, get["port"]) != listen:
                    problems.append(f"{ident(w)}: {probe} is not vLLM's /health on --port {listen}")
    return problems


def _mount_at(workload: Obj, container: Obj, path: str) -> tuple[Obj, Obj] | None:
    """The mount behind `path` in the container (the deepest one), and its volume."""
    mounts = [m for m in container.get("volumeMounts", []) if (path + "/").startswith(m["mountPath"].rstrip("/") + "/")]
    if not mounts:
        return None
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    return mount, next(v for v in pod_spec(workload).get("volumes", []) if v["name"] == mount["name"])


def _mount_source(workload: Obj, container: Obj, path: str) -> tuple[str, bool] | None:
    """The volume (as a comparable key) behind `path` in the container, and whether it is writable."""
    found = _mount_at(workload, container, path)
    if found is None:
        return None
    mount, volume = found
    claim = volume.get("persistentVolumeClaim", {}).get("claimName")
    key = f"pvc:{claim}" if claim else f"{ident(workload)}:{volume['name']}"
    return key, not mount.get("readOnly", False)


def check_engines(objs: list[Obj]) -> list[str]:
    """Engines run the command line Tailor gives its own child engine, with the gateway's
    settings; the gateway lists each engine pod once; engines serve the model from a volume;
    their key comes from the same Secret key as the gateway's engine key."""
    problems = []
    gw, gc = gateway(objs)
    gw_env = container_env(objs, gc)
    settings = settings_from(gw_env)
    engines = engine_containers(objs)
    if not settings.engine_urls:
        if engines:
            problems.append("engine workloads exist but TAILOR_ENGINE_URLS is empty")
        if GPU not in gc.get("resources", {}).get("limits", {}):
            problems.append(f"{ident(gw)}: starts a child engine without a GPU")
        return problems
    listed: set[str] = set()
    for w, c in engines:
        env = container_env(objs, c)
        line = [expand(a, env) for a in command_line(c)]
        actual = line[line.index("-m") :]
        port = int(actual[actual.index("--port") + 1])
        launch = replace(EngineLaunch.from_settings(settings, port=port, host="0.0.0.0"), extra_args=[])
        expected = launch.command()[1:]
        if actual[: len(expected)] != expected:
            problems.append(f"{ident(w)}: command {actual} does not start with Tailor's engine command {expected}")
        if env.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING") != "True":
            problems.append(f"{ident(w)}: VLLM_ALLOW_RUNTIME_LORA_UPDATING is not True")
        key_refs = [
            next((v["valueFrom"] for v in cont.get("env", []) if v["name"] == name and "valueFrom" in v), None)
            for cont, name in ((c, "VLLM_API_KEY"), (gc, "TAILOR_ENGINE_API_KEY"))
        ]
        if key_refs[0] is None or key_refs[0] != key_refs[1]:
            problems.append(f"{ident(w)}: VLLM_API_KEY is not the gateway's TAILOR_ENGINE_API_KEY secret")
        if _mount_source(w, c, str(launch.model_path)) is None:
            problems.append(f"{ident(w)}: the model {launch.model_path} is on no volume")
        if GPU not in c.get("resources", {}).get("limits", {}):
            problems.append(f"{ident(w)}: has no {GPU} limit")
        if w["kind"] == "StatefulSet":
            service = w["spec"]["serviceName"]
            listed |= {
                f"http://{w['metadata']['name']}-{i}.{service}:{port}" for i in range(w["spec"].get("replicas", 1))
            }
    urls = {f"{u.scheme}://{u.netloc}" for u in map(urlsplit, settings.engine_urls)}
    if urls != listed:
        problems.append(f"TAILOR_ENGINE_URLS {sorted(urls)} are not the engine pods {sorted(listed)}")
    return problems


def _service_named(objs: list[Obj], host: str, namespace: str | None) -> Obj | None:
    """The Service a cluster DNS name names from a pod in `namespace`: NAME, NAME.NAMESPACE or
    NAME.NAMESPACE.svc[.<cluster domain>]."""
    labels = host.split(".")
    if (len(labels) > 1 and labels[1] != namespace) or (len(labels) > 2 and labels[2] != "svc"):
        return None
    svc = find(objs, "Service", labels[0])
    return svc if svc is not None and svc["metadata"].get("namespace") == namespace else None


def _container_port_behind(svc: Obj, port: int, container: Obj) -> int | None:
    """The container's port that the Service's `port` forwards to, if it is one of the container's."""
    entry = next((p for p in svc["spec"]["ports"] if p["port"] == port), None)
    return None if entry is None else _port(container, entry.get("targetPort", port))


def _fetches_from_gateway(
    objs: list[Obj], engine: Obj, container: Obj, gw: Obj, gc: Obj, settings: Settings
) -> list[str]:
    """TAILOR_ADAPTER_SOURCE_URL names a Service in front of the gateway pods on a port that leads
    to TAILOR_PORT; the fetched copies go to a writable emptyDir of bounded size."""
    problems = []
    env = container_env(objs, container)
    url = env.get(SOURCE_ENV)
    if not url:
        return [f"{ident(engine)}: no {SOURCE_ENV}, while the gateway has engines fetch adapters (url mode)"]
    parts = urlsplit(url)
    svc = _service_named(objs, parts.hostname or "", engine["metadata"].get("namespace"))
    if parts.scheme != "http" or svc is None or not selects(svc["spec"].get("selector", {}), pod_labels(gw)):
        problems.append(f"{ident(engine)}: {SOURCE_ENV} {url} is no http URL of a Service of the gateway pods")
    elif _container_port_behind(svc, parts.port or 80, gc) != settings.port:
        problems.append(
            f"{ident(engine)}: {SOURCE_ENV} {url}: port {parts.port or 80} of {ident(svc)} "
            f"does not lead to the gateway's TAILOR_PORT {settings.port}"
        )
    found = _mount_at(engine, container, env[CACHE_ENV]) if env.get(CACHE_ENV) else None
    if found is None or found[0].get("readOnly") or not found[1].get("emptyDir", {}).get("sizeLimit"):
        problems.append(f"{ident(engine)}: {CACHE_ENV} is not on a writable emptyDir with a sizeLimit")
    return problems


def check_adapter_source(objs: list[Obj]) -> list[str]:
    """Engines get adapter files the way the gateway serves them (TAILOR_ENGINE_ADAPTER_SOURCE):
    url, over HTTP from the gateways' Service; path, from the gateway's cache on a shared volume."""
    gw, gc = gateway(objs)
    settings = settings_from(container_env(objs, gc))
    problems = []
    for w, c in engine_containers(objs):
        if settings.engine_adapter_source == "url":
            problems += _fetches_from_gateway(objs, w, c, gw, gc, settings)
            continue
        cache = str(settings.cache_dir)
        theirs, ours = _mount_source(w, c, cache), _mount_source(gw, gc, cache)
        if theirs is None or ours is None or theirs[0] != ours[0] or not ours[1]:
            problems.append(f"{ident(w)}: does not read the gateway's adapter cache {cache} from a shared volume")
    return problems


def check_security(objs: list[Obj]) -> list[str]:
    """Non-root, read-only root file systems, no privileges; memory bounded; GPUs asked for where
    training runs; Tailor's writable paths (data dir, /tmp, $HOME) are volumes."""
    problems = []
    for w in workloads(objs):
        pod = pod_spec(w).get("securityContext", {})
        if not pod.get("runAsNonRoot") or not pod.get("runAsUser"):
            problems.append(f"{ident(w)}: may run as root")
        for c in containers(w):
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False or sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{ident(w)}/{c['name']}: privilege escalation or a writable root file system")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{ident(w)}/{c['name']}: keeps Linux capabilities")
            resources = c.get("resources", {})
            if "memory" not in resources.get("limits", {}) or "cpu" not in resources.get("requests", {}):
                problems.append(f"{ident(w)}/{c['name']}: no memory limit or CPU request")
            env = container_env(objs, c)
            writable = ["/tmp", "/home/tailor"]
            if not is_engine(c):
                writable.append(str(settings_from(env).data_dir))
            for path in writable:
                source = _mount_source(w, c, path)
                if source is None or not source[1]:
                    problems.append(f"{ident(w)}/{c['name']}: {path} is not a writable volume")
            if "tailor-trainer" in command_line(c) and GPU not in resources.get("limits", {}):
                problems.append(f"{ident(w)}/{c['name']}: a trainer without a GPU")
    return problems


def all_problems(objs: list[Obj], gateway_paths: set[str]) -> list[str]:
    checks: list[Callable[[list[Obj]], list[str]]] = [
        check_schemas,
        check_selectors,
        check_references,
        check_tailor_names,
        check_settings,
        lambda o: check_probes(o, gateway_paths),
        check_engines,
        check_adapter_source,
        check_security,
    ]
    problems = []
    for check in checks:
        try:
            problems += check(objs)
        except ValidationError as e:  # settings the checks after check_settings need
            problems.append(f"invalid settings: {e}")
    return problems


def broken_copy(objs: list[Obj], kind: str, name: str) -> tuple[list[Obj], Obj]:
    """A deep copy of the objects and, in it, the one to break."""
    copied = copy.deepcopy(objs)
    target = find(copied, kind, name)
    assert target is not None, f"{kind}/{name} is not rendered"
    return copied, target
