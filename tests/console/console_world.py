"""A seeded gateway for the console's tests: two tenants, adapters with versions, finished,
running and distillation jobs with events and an evaluation report, two weeks of traffic
and feedback. Everything is written with the functions the gateway and the trainer use
(tenants, registry, promotion, trainer.jobs, record_feedback), no engine and no worker.

The fixtures that use it are in conftest.py; the browser test starts its own app with
`console_app` and `seed`.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update

from adapters import promotion, registry
from adapters.registry import Lineage
from core.models import Feedback, Interaction
from core.states import VersionState
from gateway import tenants
from gateway.console import mount_console
from gateway.limits import TenantLimits
from gateway.services import Services
from gateway.tenants import TenantInfo
from tests.apputil import make_app
from tests.gateway.gateway_world import TINY_CONFIG, write_tiny_adapter
from trainer import job_queue, job_records, jobs
from trainer.feedback import record_feedback
from trainer.jobs import JobInfo

BASE = "tiny-base"
PRICES = {BASE: {"prompt": 0.5, "completion": 1.5}, "adapter": {"prompt": 0.8, "completion": 2.0}}
_serial = itertools.count()
ADMIN_KEY = "adm"  # the operator's key of every app here (tests.apputil.make_app)


def console_app(tmp: Path, **settings: Any) -> FastAPI:
    """The real gateway app with the console mounted; no engine, no trainer child."""
    base_dir = tmp / "tiny-llama"
    base_dir.mkdir(parents=True, exist_ok=True)
    (base_dir / "config.json").write_text(json.dumps(TINY_CONFIG))
    app = make_app(
        tmp / "data",
        run_trainer=False,
        base_model_path=base_dir,
        base_model_name=BASE,
        prices=PRICES,
        auth_cache_ttl_s=0.0,
        **settings,
    )
    mount_console(app)  # until create_app does it
    return app


@dataclass
class World:
    app: FastAPI
    services: Services
    tmp: Path
    acme: TenantInfo
    beta: TenantInfo
    keys: dict[str, str]  # tenant name -> API key secret
    trained_job: str  # acme: succeeded, made support v2 (candidate), evaluated with a report
    running_job: str  # acme: running, three steps so far
    distill_job: str  # acme: distillation, made faq v1
    beta_job: str  # beta: queued

    def register(self, tenant: TenantInfo, name: str, **lineage: Any) -> registry.VersionInfo:
        """A new version of `name`: active at once, or a trained candidate when `lineage` is given."""
        source = write_tiny_adapter(self.tmp / f"src-{name}-{next(_serial)}")
        trained: dict[str, Any] = {}
        if lineage:
            trained = {
                "source": "training",
                "activate": False,
                "state": VersionState.CANDIDATE,
                "lineage": Lineage(**lineage),
            }
        s = self.services
        return registry.register_dir(
            s.db,
            s.store,
            s.limits,
            tenant_id=tenant.id,
            name=name,
            source_dir=source,
            base_model_name=BASE,
            actor="test",
            **trained,
        )


WorldClient = tuple[World, TestClient]  # the `world` fixture: the seeded app and a client of it
SignIn = Callable[[str], TestClient]  # the `sign_in` fixture: a new client signed in with a key


def _losses(n: int) -> list[float]:
    return [round(2.4 * (0.86**i) + 0.25 + 0.05 * ((i * 7) % 3), 4) for i in range(n)]


def _steps(db: Any, job_id: str, losses: list[float], total: int) -> None:
    for i, loss in enumerate(losses, start=1):
        job_records.add_event(
            db,
            job_id,
            f"Step {i}/{total}: training loss={loss:.4f}",
            data={"step": i, "total_steps": total, "train_loss": loss},
        )


def _report(job_id: str, losses: list[float]) -> dict[str, Any]:
    """A report.json as trainer.report writes it, with two changed answers and one the same."""
    examples = [
        ("Where is my parcel 4411?", "It left the depot today.", "I cannot help.", "It left the depot today."),
        ("Can I return shoes after 40 days?", "Returns close after 30 days.", "Yes.", "Returns close after 30 days."),
        ("Hello", "Hello! How can I help?", "Hello! How can I help?", "Hello! How can I help?"),
    ]
    return {
        "job_id": job_id,
        "decision": {"promote": True, "reasons": ["token_f1 improved by 0.21"]},
        "metrics": {},
        "training": {"steps": len(losses), "losses": losses, "final_loss": losses[-1]},
        "examples_total": 3,
        "examples_changed": 2,
        "examples": [
            {
                "index": i,
                "changed": cand != base,
                "prompt_text": prompt,
                "reference": ref,
                "candidate_output": cand,
                "baseline_output": base,
                "candidate_f1": 1.0,
                "baseline_f1": 0.1 if cand != base else 1.0,
                "candidate_exact": True,
                "baseline_exact": cand == base,
                "judge": None,
            }
            for i, (prompt, ref, base, cand) in enumerate(examples)
        ],
    }


def _started_job(w: World, method: str, adapter: str, losses: list[float], total: int, **submit: Any) -> JobInfo:
    """A job of acme's, claimed by worker w1, with a step event per loss so far."""
    s = w.services
    job = jobs.submit(s.db, w.acme.id, method=method, model=BASE, adapter_name=adapter, actor="test", **submit)
    job_queue.claim_next(s.db, "w1", job_id=job.id)
    _steps(s.db, job.id, losses, total)
    return job


def _succeeded(w: World, job: JobInfo, version: registry.VersionInfo, **result: Any) -> str:
    """Finish a claimed job as succeeded, with `version` the adapter it made; returns its id."""
    job_queue.finish_job(
        w.services.db,
        job.id,
        "w1",
        status="succeeded",
        fine_tuned_model=f"{version.adapter_name}@v{version.version}",
        result_version_id=version.id,
        **result,
    )
    return job.id


def _trained_job(w: World) -> str:
    s, acme = w.services, w.acme
    losses = _losses(24)
    job = _started_job(w, "supervised", "support", losses, len(losses))
    active = promotion.active_version(s.db, acme.id, "support")
    version = w.register(
        acme,
        "support",
        job_id=job.id,
        dataset_id="ds-seed",
        metrics={"train_loss": losses[-1]},
        parent_version_id=active.id if active else None,
    )
    prefix = f"reports/{acme.id}/{job.id}"
    s.blobs.put_bytes(f"{prefix}/report.json", json.dumps(_report(job.id, losses)).encode())
    job_records.record_evaluation(
        s.db,
        tenant_id=acme.id,
        job_id=job.id,
        candidate_version_id=version.id,
        baseline_version_id=active.id if active else None,
        dataset_id="ds-seed",
        candidate_metrics={"n": 3, "exact_match": 0.67, "token_f1": 0.81, "perplexity": 3.2, "win_rate": 0.7},
        baseline_metrics={"n": 3, "exact_match": 0.33, "token_f1": 0.6, "perplexity": 4.9, "win_rate": 0.3},
        decision="candidate",
        reasons=["token_f1 improved by 0.21", "waiting for a person to promote"],
        report_key=f"{prefix}/report.json",
    )
    job_records.add_event(s.db, job.id, "The job has successfully completed: support@v2 (candidate)")
    return _succeeded(w, job, version, decision="candidate", metrics={"train_loss": losses[-1]}, trained_tokens=5120)


def _distill_job(w: World) -> str:
    s, acme = w.services, w.acme
    job = _started_job(w, "distillation", "faq", _losses(12), 12, dataset_id="ds-distill")
    version = w.register(acme, "faq", job_id=job.id, dataset_id="ds-distill", metrics=None, parent_version_id=None)
    promotion.promote(s.db, acme.id, "faq", version.version, actor="seed")
    results = {
        "prompt_tokens_with_context": 880.0,
        "prompt_tokens_without_context": 40.0,
        "prompt_tokens_saved_per_request": 840.0,
        "prompt_tokens_saved_fraction": 0.9545,
        "teacher_agreement_exact": 0.82,
        "teacher_agreement_f1": 0.91,
        "baseline_agreement_exact": 0.12,
    }
    return _succeeded(w, job, version, decision="promoted", metrics={"distillation": results})


def _running_job(w: World) -> str:
    return _started_job(w, "dpo", "support", _losses(3), 40).id


def _traffic(w: World) -> None:
    """Two weeks of requests for both tenants, with feedback on acme's support answers."""
    s, acme, beta = w.services, w.acme, w.beta
    ids = {
        (a.name, v.version): v.id for t in (acme, beta) for a in registry.list_adapters(s.db, t.id) for v in a.versions
    }
    today = datetime.now(timezone.utc).date()
    rows: list[Interaction] = []
    for back in range(14):
        day = datetime.combine(today - timedelta(days=back), time(9), tzinfo=timezone.utc)
        plan = [
            (acme, BASE, None, 3 + back % 4, 300),
            (acme, "support", ids[("support", 1)], 4 + (back * 3) % 5, 180),
            (acme, "faq", ids[("faq", 1)], 2 + back % 3, 60),
            (beta, "helper", ids[("helper", 1)], 2 + back % 2, 120),
        ]
        for tenant, model, version_id, n, prompt in plan:
            for i in range(n):
                rows.append(
                    Interaction(
                        id=f"chatcmpl-seed-{tenant.name}-{model}-{back}-{i}",
                        tenant_id=tenant.id,
                        endpoint="chat.completions",
                        model=model,
                        adapter_version_id=version_id,
                        request={"messages": [{"role": "user", "content": f"Question {i} about order {1000 + back}"}]},
                        response_text=f"Answer {i}: your order {1000 + back} ships tomorrow.",
                        prompt_tokens=prompt + 10 * i,
                        completion_tokens=40 + 5 * i,
                        latency_ms=float(80 + 35 * i + 4 * back),
                        status_code=500 if (i == 0 and back % 5 == 0) else 200,
                        created_at=day + timedelta(minutes=i),
                    )
                )
    with s.db.session() as session:
        session.add_all(rows)
    for back in range(14):
        for i in range(3):
            iid = f"chatcmpl-seed-acme-support-{back}-{i + 1}"
            good = (i + back) % 4 != 0 or back < 3 and i == 0
            correction = "Your order ships on Monday." if not good and i == 1 else None
            info = record_feedback(
                s.db, acme.id, interaction_id=iid, rating="good" if good else "bad", correction=correction
            )
            # Rated a couple of hours after the answer, so the signal spreads over the two weeks.
            when = datetime.combine(today - timedelta(days=back), time(11), tzinfo=timezone.utc)
            with s.db.session() as session:
                session.execute(update(Feedback).where(Feedback.id == info.id).values(created_at=when))


def seed(app: FastAPI, tmp: Path) -> World:
    """Fill a started app's database; returns what the tests need to find it again."""
    services: Services = app.state.services
    db = services.db
    acme, beta = tenants.create_tenant(db, "acme"), tenants.create_tenant(db, "beta")
    keys = {t.name: tenants.create_key(db, t.id, name="console test").secret for t in (acme, beta)}
    tenants.set_limits(db, acme.id, TenantLimits(requests_per_minute=600, tokens_per_day=2_000_000))
    w = World(app, services, tmp, acme, beta, keys, "", "", "", "")
    w.register(acme, "support")
    w.register(beta, "helper")
    w.trained_job = _trained_job(w)
    w.distill_job = _distill_job(w)
    w.running_job = _running_job(w)
    w.beta_job = jobs.submit(db, beta.id, method="supervised", model=BASE, adapter_name="helper", actor="test").id
    _traffic(w)
    return w


CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF_FIELD.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def log_in(client: TestClient, key: str) -> Any:
    """Submit the login form with `key`; returns the final response (redirects followed)."""
    form = client.get("/console/login")
    assert form.status_code == 200, form.text
    return client.post("/console/login", data={"key": key, "csrf": csrf_of(form.text)})
