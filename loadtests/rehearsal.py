"""A cluster rehearsed on one machine: faults injected while traffic runs through two gateways.

    python -m loadtests.rehearsal                    # mock engines, 12 s of traffic per fault
    python -m loadtests.rehearsal --seconds 30 --engine vllm

Starts, all on loopback: a PostgreSQL cluster (loadtests.pg_cluster), an S3-compatible object
store (moto's server) holding the adapter and blob stores, two engines (loadtests.mock_engine,
or vLLM with `--engine vllm`) and two `tailor serve --no-trainer` gateways sharing the
database, the stores and the sealing key, each with both engines as operator-run engines.
A tenant's adapter gets two versions through gateway 1. Then, each while clients send chat
requests (base model and adapter, in turn) through both gateways:

1. promotion: version 2 is activated through gateway 1; gateway 2 serves it within
   TAILOR_AUTH_CACHE_TTL_S (read from the interaction log: which version answered each probe);
2. engine killed: engine 1 gets SIGKILL; no request that started after the kill may fail
   (requests in flight may, with an OpenAI-shaped error), and engine 2 answers the rest;
3. PostgreSQL restarted: the server stops (`pg_ctl -m fast`) and comes back seconds later; no
   request may fail, and every answered request's interaction must be in the database.

Prints a table (what was injected, what was measured, the verdict) and exits 1 when any
verdict fails. Not rehearsed here yet: a trainer killed mid-job (the README's reliability
table says where that is tested).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import httpx
from sqlalchemy import create_engine, text

from loadtests import launcher
from loadtests.admin_api import admin_client, check, create_tenant_key
from loadtests.bench_cli import doc_parser
from loadtests.launcher import MODEL_DIR, progress
from loadtests.lora_adapters import adapter_spec, build_adapters
from loadtests.pg_cluster import Cluster, create_database, running_cluster

TENANT, ADAPTER = "rehearsal", "support"
# How long a gateway may serve a promoted name's previous version (its route cache).
CACHE_TTL_S = 2.0
BUCKET = "tailor-rehearsal"
# Clients sending through the gateways together (half through each), each pausing between
# requests: steady traffic, not a saturation test, so the faults are what the figures show.
CLIENTS = 4
PAUSE_S = 0.02


@dataclass
class Rehearsal:
    """What the rehearsal started: the database, the stores' endpoint, engines and gateways."""

    pg: Cluster
    db_url: str
    engines: list[launcher.LocalEngine]
    gateways: list[str]
    admin_key: str
    tenant_key: str = ""
    versions: dict[int, str] = field(default_factory=dict)  # version number -> id


@dataclass(frozen=True)
class Outcome:
    gateway: int
    model: str
    started: float
    ended: float
    status: int
    interaction_id: str | None
    error_type: str | None


@dataclass(frozen=True)
class Verdict:
    fault: str
    measured: str
    passed: bool


# --------------------------------------------------------------------------- the cluster


@contextlib.contextmanager
def object_store() -> Iterator[dict[str, str]]:
    """moto's S3 server on a free port with the rehearsal's bucket; the environment that points
    boto3 (and so s3fs) at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    port = launcher.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "rehearsal",
        "AWS_SECRET_ACCESS_KEY": "rehearsal-" + secrets.token_hex(8),
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        with mock.patch.dict(os.environ, env):
            boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield env
    finally:
        server.stop()


@contextlib.contextmanager
def running(engine: str, work: Path) -> Iterator[Rehearsal]:
    """Every part started, in dependency order; stopped in reverse however we leave."""
    with contextlib.ExitStack() as stack:
        progress("starting PostgreSQL and the object store ...")
        pg = stack.enter_context(running_cluster())
        db_url = create_database(pg.url, "rehearsal")
        store_env = stack.enter_context(object_store())
        admin_key = "adm-" + secrets.token_urlsafe(16)
        engine_key = secrets.token_urlsafe(32)
        common = {
            **store_env,
            "TAILOR_DATABASE_URL": db_url,
            "TAILOR_ADAPTER_STORE_URL": f"s3://{BUCKET}/adapters",
            "TAILOR_BLOB_STORE_URL": f"s3://{BUCKET}/blobs",
            "TAILOR_SECRET_KEY": secrets.token_urlsafe(32),
            "TAILOR_RUN_TRAINER": "false",
            "TAILOR_AUTH_CACHE_TTL_S": str(CACHE_TTL_S),
            "TAILOR_ENGINE_HEALTH_INTERVAL_S": "1",
        }
        ports = [launcher.free_port() for _ in range(2)]
        envs = [launcher.gateway_env(work / f"gw{i}", port, admin_key, MODEL_DIR, env_extra=common)
                for i, port in enumerate(ports)]  # fmt: skip
        engines = []
        for i in range(2):
            launch = launcher.engine_launch(launcher.settings_from(envs[0]), port=0)
            launch = dataclasses.replace(launch, log_file=work / f"engine{i}.log")
            started = launcher.start_engine(launch, engine_key, mock=engine == "mock")
            stack.callback(launcher.stop_engine, started.process)
            engines.append(started)
        for started in engines:
            launcher.wait_engine_ready(started)
        urls = []
        for i, env in enumerate(envs):
            env.pop("TAILOR_ENGINE_PORT", None)
            env.update({"TAILOR_ENGINE_URLS": ",".join(e.url for e in engines), "TAILOR_ENGINE_API_KEY": engine_key})
            (work / f"gw{i}").mkdir(parents=True, exist_ok=True)
            url = f"http://127.0.0.1:{ports[i]}"
            stack.enter_context(launcher.running_gateway(env, url, work / f"gw{i}.log", behind="both engines"))
            urls.append(url)
        yield Rehearsal(pg, db_url, engines, urls, admin_key)


def set_up_tenant(c: Rehearsal, work: Path) -> None:
    """The tenant, its key, and its adapter with two versions (the first active), through gateway 1."""
    gw1 = GatewayAccess(c, 0)
    c.tenant_key = create_tenant_key(gw1, TENANT, "rehearsal")
    sources = build_adapters([adapter_spec(0), adapter_spec(1)], work / "adapters", MODEL_DIR)
    with admin_client(gw1) as admin:
        for number, source in enumerate(sources.values(), start=1):
            body = {"name": ADAPTER, "path": str(source), "activate": number == 1}
            check(admin.post(f"/admin/tenants/{TENANT}/adapters/register", json=body), f"registering v{number}")
        info = check(admin.get(f"/admin/tenants/{TENANT}/adapters/{ADAPTER}"), "reading the adapter", expect=200)
    c.versions = {int(v["version"]): str(v["id"]) for v in info["versions"]}


@dataclass(frozen=True)
class GatewayAccess:
    """One of the rehearsal's gateways as the admin API helpers take it (url, admin_key)."""

    rehearsal: Rehearsal
    index: int

    @property
    def url(self) -> str:
        return self.rehearsal.gateways[self.index]

    @property
    def admin_key(self) -> str:
        return self.rehearsal.admin_key


# --------------------------------------------------------------------------- traffic


def ask(http: httpx.Client, c: Rehearsal, gateway: int, model: str) -> Outcome:
    """One chat request through gateway `gateway`, and how it went."""
    body = {"model": model, "messages": [{"role": "user", "content": "Where is my order?"}], "max_tokens": 8}
    started = time.monotonic()
    try:
        r = http.post(f"{c.gateways[gateway]}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {c.tenant_key}"})  # fmt: skip
    except httpx.HTTPError:
        return Outcome(gateway, model, started, time.monotonic(), 0, None, "transport")
    error = None if r.status_code == 200 else _error_kind(r)
    return Outcome(gateway, model, started, time.monotonic(), r.status_code, r.headers.get("x-tailor-interaction-id"),
                   error)  # fmt: skip


def _error_kind(r: httpx.Response) -> str:
    """The OpenAI error body's `type` and `code` ("type/code"), or "not_openai_shaped"."""
    error = _json(r).get("error")
    if not isinstance(error, dict) or not error.get("type"):
        return "not_openai_shaped"
    return f"{error['type']}/{error.get('code')}: {str(error.get('message'))[:80]}"


def _json(r: httpx.Response) -> dict[str, object]:
    try:
        data = r.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def traffic(c: Rehearsal, clients: int = CLIENTS) -> Iterator[list[Outcome]]:
    """Clients sending requests through both gateways (base model and adapter in turn) until the
    block ends; the outcomes so far, in the list yielded."""
    outcomes: list[Outcome] = []
    stop = threading.Event()
    base = MODEL_DIR.name

    def client(i: int) -> None:
        with httpx.Client(timeout=30) as http:
            for model in itertools.cycle((base, ADAPTER)):
                if stop.is_set():
                    return
                outcomes.append(ask(http, c, i % 2, model))
                time.sleep(PAUSE_S)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        yield outcomes
    finally:
        stop.set()
        for t in threads:
            t.join(60)


def versions_of(c: Rehearsal, interaction_ids: Sequence[str], wait_s: float = 15.0) -> dict[str, str | None]:
    """The adapter version that answered each interaction, once the gateways' logs have written
    them all (or `wait_s` has passed: the missing ones are left out)."""
    engine = create_engine(c.db_url)
    found: dict[str, str | None] = {}
    deadline = time.monotonic() + wait_s
    try:
        while True:
            with engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT id, adapter_version_id FROM interactions WHERE id = ANY(:ids)"),
                    {"ids": list(interaction_ids)},
                ).all()
            found = {str(r[0]): r[1] for r in rows}
            if len(found) == len(set(interaction_ids)) or time.monotonic() > deadline:
                return found
            time.sleep(0.5)
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- faults


def promotion(c: Rehearsal, seconds: float) -> Verdict:
    """Version 2 activated through gateway 1: how long gateway 2 still serves version 1."""
    probes: list[tuple[float, str]] = []
    with httpx.Client(timeout=30) as http, traffic(c):
        for _ in range(3):  # gateway 2 has the route to version 1 cached
            ask(http, c, 1, ADAPTER)
        time.sleep(seconds / 3)
        promoted = time.monotonic()
        r = http.post(f"{c.gateways[0]}/v1/adapters/{ADAPTER}/activate", json={"version": 2},
                      headers={"Authorization": f"Bearer {c.tenant_key}"})  # fmt: skip
        check(r, "activating version 2", expect=200)
        while time.monotonic() - promoted < CACHE_TTL_S + 2:
            out = ask(http, c, 1, ADAPTER)
            if out.interaction_id:
                probes.append((out.started - promoted, out.interaction_id))
            time.sleep(0.05)
    served = versions_of(c, [iid for _, iid in probes])
    new = c.versions[2]
    stale = [t for t, iid in probes if served.get(iid) != new]
    lag = max(stale, default=0.0)
    passed = bool(probes) and len(served) == len(probes) and lag <= CACHE_TTL_S + 0.5
    measured = (f"gateway 2 served version 1 up to {lag:.2f} s after the promotion (bound {CACHE_TTL_S:.0f} s), "
                f"version 2 in {len(probes) - len(stale)} of {len(probes)} probes")  # fmt: skip
    return Verdict("promotion through gateway 1", measured, passed)


def engine_killed(c: Rehearsal, seconds: float) -> Verdict:
    """Engine 1 killed under traffic: what failed, and where the rest was answered."""
    with traffic(c) as outcomes:
        time.sleep(seconds / 3)
        killed = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(c.engines[0].process.pid, signal.SIGKILL)
        time.sleep(seconds * 2 / 3)
    after = [o for o in outcomes if o.started >= killed]
    in_flight = [o for o in outcomes if o.started < killed < o.ended]
    failed_after = [o for o in after if o.status != 200]
    failed_in_flight = [o for o in in_flight if o.status != 200]
    shaped = all(o.error_type not in (None, "not_openai_shaped") for o in failed_in_flight + failed_after)
    passed = bool(after) and not failed_after and shaped
    errors = "OpenAI-shaped errors" if shaped else "errors NOT OpenAI-shaped"
    kinds = sorted({f"{o.status} {o.error_type} via gateway {o.gateway + 1} ({o.model})" for o in failed_after})
    if kinds:
        errors += "; after the kill: " + ", ".join(kinds)
    measured = (f"{len(after)} requests after the kill, {len(failed_after)} failed; {len(in_flight)} in flight, "
                f"{len(failed_in_flight)} failed ({errors})")  # fmt: skip
    return Verdict("engine 1 killed (SIGKILL)", measured, passed)


def database_restarted(c: Rehearsal, seconds: float, down_s: float = 3.0) -> Verdict:
    """PostgreSQL stopped and started again under traffic: failures, and interactions kept."""
    with traffic(c) as outcomes:
        time.sleep(seconds / 3)
        c.pg.stop("fast")
        time.sleep(down_s)
        c.pg.start()
        time.sleep(seconds / 3)
    answered = [o.interaction_id for o in outcomes if o.status == 200 and o.interaction_id]
    failed = [o for o in outcomes if o.status != 200]
    stored = versions_of(c, answered, wait_s=30.0)
    lost = len(set(answered)) - len(stored)
    passed = bool(answered) and not failed and lost == 0
    measured = (f"PostgreSQL down {down_s:.0f} s: {len(outcomes)} requests, {len(failed)} failed; "
                f"{len(answered)} answered, {lost} of their interactions lost")  # fmt: skip
    return Verdict("PostgreSQL restarted", measured, passed)


def report(verdicts: Sequence[Verdict]) -> str:
    rows = ["| fault | measured | verdict |", "|---|---|---|"]
    rows += [f"| {v.fault} | {v.measured} | {'PASS' if v.passed else 'FAIL'} |" for v in verdicts]
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = doc_parser("python -m loadtests.rehearsal", __doc__)
    parser.add_argument("--seconds", type=float, default=12.0, help="seconds of traffic around each fault")
    parser.add_argument("--engine", choices=("mock", "vllm"), default="mock", help="the two engines")
    parser.add_argument("--json", type=Path, default=None, help="also write the verdicts here")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tailor-rehearsal-"))
    try:
        with running(args.engine, work) as c:
            set_up_tenant(c, work)
            # The engine kill comes last but one: the database restart runs on the engine left.
            verdicts = [
                promotion(c, args.seconds),
                engine_killed(c, args.seconds),
                database_restarted(c, args.seconds),
            ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report(verdicts))
    if args.json:
        args.json.write_text(json.dumps([v.__dict__ for v in verdicts], indent=2))
    return 0 if all(v.passed for v in verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
