"""deploy/'s Kubernetes manifests: every overlay renders offline, every object is valid for
Kubernetes 1.37 (the ServiceMonitors for the Prometheus Operator's CRD), and the objects agree
with each other and with Tailor's code (tests/deploy/manifests.py says what is checked).
The last tests break rendered objects, and one a manifest file, to show the checks catch it."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.apputil import make_app
from tests.deploy import manifests as m
from tests.deploy import rendered as r
from tests.deploy.manifests import Obj


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Obj]]:
    work = tmp_path_factory.mktemp("deploy")
    return {overlay: r.render(r.DEPLOY, overlay, work) for overlay in r.OVERLAYS}


@pytest.fixture(scope="module")
def gateway_paths(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The routes of the real gateway app."""
    app = make_app(tmp_path_factory.mktemp("gw"))
    return {getattr(route, "path", "") for route in app.routes}


def test_overlays_are_the_documented_ones() -> None:
    assert r.OVERLAYS == ["dev", "production"]


@pytest.mark.parametrize("overlay", r.OVERLAYS)
def test_objects_are_valid_kubernetes(rendered: dict[str, list[Obj]], overlay: str) -> None:
    assert m.check_schemas(rendered[overlay]) == []


@pytest.mark.parametrize("overlay", r.OVERLAYS)
def test_selectors_ports_and_references_resolve(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    assert m.check_selectors(objs) + m.check_references(objs) == []


@pytest.mark.parametrize("overlay", r.OVERLAYS)
def test_tailor_settings_are_real_and_valid(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    assert m.check_tailor_names(objs) + m.check_settings(objs) == []


@pytest.mark.parametrize("overlay", r.OVERLAYS)
def test_probes_engines_and_security(rendered: dict[str, list[Obj]], overlay: str, gateway_paths: set[str]) -> None:
    objs = rendered[overlay]
    assert m.check_probes(objs, gateway_paths) + m.check_engines(objs) + m.check_security(objs) == []


@pytest.mark.parametrize("overlay", r.OVERLAYS)
def test_engines_get_adapters_as_the_gateway_serves_them(rendered: dict[str, list[Obj]], overlay: str) -> None:
    assert m.check_adapter_source(rendered[overlay]) == []


def test_production_runs_engines_trainers_and_monitoring(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["production"]
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert {
        ("Deployment", "tailor-gateway"),
        ("Service", "tailor-gateway"),
        ("HorizontalPodAutoscaler", "tailor-gateway"),
        ("PodDisruptionBudget", "tailor-gateway"),
        ("StatefulSet", "tailor-engine"),
        ("Service", "tailor-engine"),
        ("Deployment", "tailor-trainer"),
        ("ServiceMonitor", "tailor-gateway"),
        ("ServiceMonitor", "tailor-engine"),
    } <= kinds
    assert all(o["metadata"].get("namespace") == "tailor" for o in objs)
    _, gc = m.gateway(objs)
    settings = m.settings_from(m.container_env(objs, gc))
    assert settings.database_url and settings.database_url.startswith("postgresql+psycopg://")
    assert settings.adapter_store_url == "s3://tailor-prod/adapters"
    assert not settings.run_trainer
    assert len(settings.engine_urls) == 4
    assert settings.engine_adapter_source == "url"


def test_production_shares_only_the_model_volume(rendered: dict[str, list[Obj]]) -> None:
    """Engines fetch adapters over HTTP: no claim holds adapters, and every pod's adapter cache
    is its own."""
    objs = rendered["production"]
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "PersistentVolumeClaim"] == ["tailor-models"]
    for w in m.workloads(objs):
        claims = {
            v["persistentVolumeClaim"]["claimName"] for v in m.pod_spec(w)["volumes"] if "persistentVolumeClaim" in v
        }
        assert claims <= {"tailor-models"}, m.ident(w)


def test_dev_is_one_pod_with_its_own_engine_and_trainer(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["dev"]
    assert [m.ident(w) for w in m.workloads(objs)] == ["Deployment/tailor-gateway"]
    _, gc = m.gateway(objs)
    settings = m.settings_from(m.container_env(objs, gc))
    assert settings.engine_urls == [] and settings.run_trainer
    assert settings.engine_adapter_source == "path"
    assert settings.database_url == "sqlite:////data/tailor.db"


def test_secret_example_fills_every_key_the_manifests_use(rendered: dict[str, list[Obj]]) -> None:
    secret = next(o for o in rendered["production"] if o["kind"] == "Secret")
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(values) == {
        "database-url",
        "admin-key",
        "secret-key",
        "engine-api-key",
        "aws-access-key-id",
        "aws-secret-access-key",
    }


def test_gateway_probes_answer_as_kubernetes_expects(tmp_path: Path) -> None:
    """Alive without an engine; not ready until one is healthy (here none answers)."""
    with TestClient(make_app(tmp_path)) as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable"


# ---------------------------------------------------------------- the checks catch breakage


def _gateway_container(target: Obj) -> Obj:
    return m.pod_spec(target)["containers"][0]


def _set_engine_arg(target: Obj, flag: str, value: str) -> None:
    args = m.pod_spec(target)["containers"][0]["args"]
    args[args.index(flag) + 1] = value


def _env_var(target: Obj, name: str) -> Obj:
    return next(v for v in m.pod_spec(target)["containers"][0]["env"] if v["name"] == name)


def _drop_env_var(target: Obj, name: str) -> None:
    env = m.pod_spec(target)["containers"][0]["env"]
    env.remove(_env_var(target, name))


BREAKAGES: dict[str, tuple[str, str, Callable[[Obj], None], str]] = {
    "readiness on a path the gateway lacks": (
        "Deployment",
        "tailor-gateway",
        lambda t: _gateway_container(t)["readinessProbe"]["httpGet"].update(path="/readyz"),
        "readinessProbe asks /readyz",
    ),
    "liveness on the wrong port": (
        "Deployment",
        "tailor-gateway",
        lambda t: _gateway_container(t)["livenessProbe"]["httpGet"].update(port=9000),
        "livenessProbe port 9000",
    ),
    "a secret key that is not defined": (
        "Deployment",
        "tailor-gateway",
        lambda t: _gateway_container(t)["env"][1]["valueFrom"]["secretKeyRef"].update(key="admin_key"),
        "names tailor-secrets",
    ),
    "a misspelt setting": (
        "ConfigMap",
        "tailor-config",
        lambda t: t["data"].update(TAILOR_ENGINE_URL="http://x:8000"),
        "TAILOR_ENGINE_URL is no Tailor setting",
    ),
    "a setting Tailor would refuse": (
        "ConfigMap",
        "tailor-config",
        lambda t: t["data"].update(TAILOR_TRAINER_SHARDING="zero3"),
        "trainer_sharding",
    ),
    "a Service that selects nothing": (
        "Service",
        "tailor-gateway",
        lambda t: t["spec"]["selector"].update({"app.kubernetes.io/component": "gateways"}),
        "selects no pods",
    ),
    "an engine rank below the gateway's": (
        "StatefulSet",
        "tailor-engine",
        lambda t: _set_engine_arg(t, "--max-lora-rank", "8"),
        "Tailor's engine command",
    ),
    "an engine without runtime LoRA loading": (
        "StatefulSet",
        "tailor-engine",
        lambda t: _drop_env_var(t, "VLLM_ALLOW_RUNTIME_LORA_UPDATING"),
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING",
    ),
    "an engine pod the gateway does not list": (
        "StatefulSet",
        "tailor-engine",
        lambda t: t["spec"].update(replicas=5),
        "are not the engine pods",
    ),
    "an adapter source URL on a host that is not the gateways' Service": (
        "StatefulSet",
        "tailor-engine",
        lambda t: _env_var(t, "TAILOR_ADAPTER_SOURCE_URL").update(value="http://tailor-engine:8000"),
        "is no http URL of a Service of the gateway pods",
    ),
    "an adapter source URL on a port the gateways' Service lacks": (
        "StatefulSet",
        "tailor-engine",
        lambda t: _env_var(t, "TAILOR_ADAPTER_SOURCE_URL").update(value="http://tailor-gateway:8080"),
        "does not lead to the gateway's TAILOR_PORT",
    ),
    "an adapter source URL in another namespace": (
        "StatefulSet",
        "tailor-engine",
        lambda t: _env_var(t, "TAILOR_ADAPTER_SOURCE_URL").update(value="http://tailor-gateway.tailor-dev:8000"),
        "is no http URL of a Service of the gateway pods",
    ),
    "engines without an adapter source while the gateway is in url mode": (
        "StatefulSet",
        "tailor-engine",
        lambda t: _drop_env_var(t, "TAILOR_ADAPTER_SOURCE_URL"),
        "no TAILOR_ADAPTER_SOURCE_URL",
    ),
    "an engine adapter cache without a size limit": (
        "StatefulSet",
        "tailor-engine",
        lambda t: next(v for v in m.pod_spec(t)["volumes"] if v["name"] == "adapters").update(emptyDir={}),
        "TAILOR_ADAPTER_CACHE_DIR is not on a writable emptyDir",
    ),
    "an engine key from another Secret key": (
        "StatefulSet",
        "tailor-engine",
        lambda t: _env_var(t, "VLLM_API_KEY")["valueFrom"]["secretKeyRef"].update(key="admin-key"),
        "VLLM_API_KEY is not the gateway's TAILOR_ENGINE_API_KEY",
    ),
    "a gateway in url mode without the engine key": (
        "Deployment",
        "tailor-gateway",
        lambda t: _drop_env_var(t, "TAILOR_ENGINE_API_KEY"),
        "TAILOR_ENGINE_ADAPTER_SOURCE=url needs TAILOR_ENGINE_API_KEY",
    ),
    "a trainer left in url mode": (
        "Deployment",
        "tailor-trainer",
        lambda t: _drop_env_var(t, "TAILOR_ENGINE_ADAPTER_SOURCE"),
        "Deployment/tailor-trainer/trainer: 1 validation error",
    ),
    "an unknown field": (
        "Deployment",
        "tailor-trainer",
        lambda t: _gateway_container(t).update(imagePullPolicyy="Always"),
        "Additional properties are not allowed",
    ),
    "a misspelt ServiceMonitor field": (
        "ServiceMonitor",
        "tailor-gateway",
        lambda t: t["spec"]["endpoints"][0].update(intervall="30s"),
        "ServiceMonitor/tailor-gateway: Additional properties",
    ),
    "a ServiceMonitor on a port the Service lacks": (
        "ServiceMonitor",
        "tailor-engine",
        lambda t: t["spec"]["endpoints"][0].update(port="metrics"),
        "port metrics is no port",
    ),
    "a writable root file system": (
        "Deployment",
        "tailor-gateway",
        lambda t: _gateway_container(t)["securityContext"].update(readOnlyRootFilesystem=False),
        "writable root file system",
    ),
    "a trainer without a GPU": (
        "Deployment",
        "tailor-trainer",
        lambda t: _gateway_container(t)["resources"]["limits"].pop("nvidia.com/gpu"),
        "a trainer without a GPU",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_object_is_caught(rendered: dict[str, list[Obj]], gateway_paths: set[str], breakage: str) -> None:
    kind, name, breaks, expected = BREAKAGES[breakage]
    objs, target = m.broken_copy(rendered["production"], kind, name)
    breaks(target)
    problems = m.all_problems(objs, gateway_paths)
    assert any(expected in p for p in problems), problems


def test_a_broken_manifest_file_is_caught(tmp_path: Path, gateway_paths: set[str]) -> None:
    """The same checks on a copy of deploy/ whose base engine drops --enable-lora."""
    broken = tmp_path / "broken"
    shutil.copytree(r.DEPLOY, broken)
    engine = broken / "base" / "engine.yaml"
    engine.write_text(engine.read_text().replace("            - --enable-lora\n", ""))
    objs = r.render(broken, "production", tmp_path / "work")
    assert any("Tailor's engine command" in p for p in m.all_problems(objs, gateway_paths))
