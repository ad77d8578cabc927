"""A cluster rehearsed on one machine: faults injected while locust drives traffic through two gateways.

    python -m loadtests.rehearsal                    # mock engines, 12 s of traffic per fault
    python -m loadtests.rehearsal --seconds 30 --engine vllm
    python -m loadtests.rehearsal --seconds 3 --job-steps 3 --stale-after 2   # short, as CI runs it

Starts, all on loopback: a PostgreSQL cluster (loadtests.pg_cluster), an S3-compatible object
store (moto's server) holding the adapter and blob stores, two engines (loadtests.mock_engine,
or vLLM with `--engine vllm`), two `tailor serve --no-trainer` gateways and one trainer worker
(loadtests.rehearsal_trainer, evaluating on a third engine of its own) sharing the database,
the stores and the sealing key; each gateway has both engines as operator-run engines.
A tenant's adapter gets two versions through gateway 1. Then, each while locust users
(loadtests.rehearsal_traffic) send chat requests (base model and adapter, in turn) through
both gateways:

1. promotion: version 2 is activated through gateway 1; gateway 2 serves it within
   TAILOR_AUTH_CACHE_TTL_S (read from the interaction log: which version answered each probe);
2. engine killed: engine 1 gets SIGKILL; no request that started after the kill may fail
   (requests in flight may, with an OpenAI-shaped error), and engine 2 answers the rest;
3. trainer killed: the tenant's small supervised job (through gateway 1's OpenAI routes) has
   saved its first checkpoint when the worker's process group gets SIGKILL and a new worker
   starts; the job must end `succeeded` on its next attempt, which resumes from the last
   checkpoint before the kill (it may redo only the steps after it), the killed worker's
   training processes must stop, and no request may fail meanwhile. With mock engines the job's
   evaluation runs on fixed answers and log-probabilities: its scores mean nothing, only that
   the job gets through every stage;
4. PostgreSQL restarted: the server stops (`pg_ctl -m fast`) and comes back seconds later; no
   request may fail, and every answered request's interaction must be in the database.

Prints a table (what was injected, what was measured, the verdict) and exits 1 when any
verdict fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import httpx
from sqlalchemy import create_engine, text

from loadtests import launcher, rehearsal_traffic, rehearsal_trainer
from loadtests.admin_api import admin_client, check, create_tenant_key
from loadtests.bench_cli import doc_parser
from loadtests.launcher import MODEL_DIR, progress
from loadtests.lora_adapters import adapter_spec, build_adapters
from loadtests.pg_cluster import Cluster, create_database, running_cluster
from loadtests.rehearsal_traffic import Outcome, ask
from loadtests.rehearsal_trainer import KillFigures, TrainerWorker

TENANT, ADAPTER = "rehearsal", "support"
# How long a gateway may serve a promoted name's previous version (its route cache).
CACHE_TTL_S = 2.0
BUCKET = "tailor-rehearsal"
# While the trainer trains, users pause longer: the training shares the machine's cores with
# the gateways, the engines and locust, and slower traffic still shows a failure.
TRAINING_PAUSE_S = 0.5


@dataclass
class Rehearsal:
    """What the rehearsal started: the database, the stores' endpoint, engines, gateways, trainer."""

    pg: Cluster
    db_url: str
    engines: list[launcher.LocalEngine]  # the gateways'; the trainer's evaluation engine is its own
    gateways: list[str]
    admin_key: str
    trainer: TrainerWorker
    work: Path
    engine_kind: str
    tenant_key: str = ""
    versions: dict[int, str] = field(default_factory=dict)  # version number -> id


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
def running(engine: str, work: Path, stale_after_s: float = rehearsal_trainer.STALE_AFTER_S) -> Iterator[Rehearsal]:
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
        for i in range(3):  # two serving engines; the third, the trainer's evaluation engine
            launch = launcher.engine_launch(launcher.settings_from(envs[0]), port=0)
            launch = dataclasses.replace(launch, log_file=work / f"engine{i}.log")
            started = launcher.start_engine(launch, engine_key, mock=engine == "mock")
            stack.callback(launcher.stop_engine, started.process)
            engines.append(started)
        for started in engines:
            launcher.wait_engine_ready(started)
        engines, eval_engine = engines[:2], engines[2]
        urls = []
        for i, env in enumerate(envs):
            env.pop("TAILOR_ENGINE_PORT", None)
            env.update({"TAILOR_ENGINE_URLS": ",".join(e.url for e in engines), "TAILOR_ENGINE_API_KEY": engine_key})
            (work / f"gw{i}").mkdir(parents=True, exist_ok=True)
            url = f"http://127.0.0.1:{ports[i]}"
            stack.enter_context(launcher.running_gateway(env, url, work / f"gw{i}.log", behind="both engines"))
            urls.append(url)
        # After the gateways: they have migrated the database by now.
        trainer = TrainerWorker(
            rehearsal_trainer.worker_env(common, work / "trainer", eval_engine, stale_after_s), work
        )
        stack.callback(trainer.stop)
        trainer.start()
        yield Rehearsal(pg, db_url, engines, urls, admin_key, trainer, work, engine)


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


def traffic(
    c: Rehearsal, pause_s: float = rehearsal_traffic.PAUSE_S
) -> contextlib.AbstractContextManager[list[Outcome]]:
    """Locust users calling both gateways (base model and adapter in turn) for the block."""
    progress("starting locust ...")
    models = (MODEL_DIR.name, ADAPTER)
    return rehearsal_traffic.traffic(c.gateways, c.tenant_key, models, c.work / "traffic", pause_s=pause_s)


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
            ask(http, c.gateways[1], c.tenant_key, 1, ADAPTER)
        time.sleep(seconds / 3)
        promoted = time.monotonic()
        r = http.post(f"{c.gateways[0]}/v1/adapters/{ADAPTER}/activate", json={"version": 2},
                      headers={"Authorization": f"Bearer {c.tenant_key}"})  # fmt: skip
        check(r, "activating version 2", expect=200)
        while time.monotonic() - promoted < CACHE_TTL_S + 2:
            out = ask(http, c.gateways[1], c.tenant_key, 1, ADAPTER)
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


def trainer_killed(c: Rehearsal, steps: int = rehearsal_trainer.STEPS) -> Verdict:
    """The trainer worker killed while a tenant's job trains, a new one started: how the job went on."""
    fault = "trainer killed mid-job (SIGKILL)"
    worker, db_url = c.trainer, c.db_url
    # Submitted first: the job's start (its training process loading) overlaps locust's.
    job_id = rehearsal_trainer.submit_job(c.gateways[0], c.tenant_key, MODEL_DIR.name, steps)
    progress(f"trainer: job {job_id} submitted ({steps} steps) ...")
    with traffic(c, TRAINING_PAUSE_S) as outcomes:
        try:
            rehearsal_trainer.wait_for(
                "the job's first checkpoint",
                lambda: rehearsal_trainer.job_state(db_url, job_id).checkpoints() or None,
                rehearsal_trainer.JOB_TIMEOUT_S,
            )
            killed_at, killed = time.time(), time.monotonic()
            below = worker.kill()
            progress("trainer: killed at the job's first checkpoint; a new worker starts ...")
            worker.start()
            gone = rehearsal_trainer.wait_gone(below, killed)
            rehearsal_trainer.wait_for("the job's end", lambda: rehearsal_trainer.job_end(db_url, job_id),
                                       rehearsal_trainer.JOB_TIMEOUT_S, every_s=1.0)  # fmt: skip
        except TimeoutError as e:
            progress(rehearsal_trainer.failure_hint(worker))
            return Verdict(fault, str(e), False)
    figures = KillFigures(rehearsal_trainer.job_state(db_url, job_id), killed_at, len(below), gone)
    failed = [o for o in outcomes if o.status != 200]
    passed = figures.passed and bool(outcomes) and not failed
    if not passed:
        progress(rehearsal_trainer.failure_hint(worker))
    on = "a mock engine (fixed answers: its scores mean nothing)" if c.engine_kind == "mock" else "a vLLM engine"
    measured = f"{figures.describe(on)}; {len(outcomes)} requests meanwhile, {len(failed)} failed"
    return Verdict(fault, measured, passed)


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
    parser.add_argument(
        "--job-steps",
        type=int,
        default=rehearsal_trainer.STEPS,
        help="training steps of the job whose worker is killed",
    )
    parser.add_argument(
        "--stale-after",
        type=float,
        default=rehearsal_trainer.STALE_AFTER_S,
        help="the trainer's TAILOR_TRAINER_STALE_AFTER_S: how long a killed worker's job waits to be requeued",
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tailor-rehearsal-"))
    try:
        with running(args.engine, work, args.stale_after) as c:
            set_up_tenant(c, work)
            # The engine kill comes before the last two: they run on the engine left.
            verdicts = [
                promotion(c, args.seconds),
                engine_killed(c, args.seconds),
                trainer_killed(c, args.job_steps),
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
