"""A retraining-policy world for trainer.policy's tests: real SQLite, tenants acme and beta,
adapter versions registered from a tiny valid LoRA, and feedback, interactions and jobs
inserted with explicit timestamps so every window is exact (the fixtures: conftest.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from adapters import registry
from adapters.registry import ValidationLimits, VersionInfo
from adapters.store import AdapterStore
from core.db import Database
from core.ids import new_id, utcnow
from core.models import AdapterVersion, Feedback, Interaction, Job

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)  # promotion time of the drift scenarios
NOW = T0 + timedelta(days=30)  # recent window: [NOW - 7 d, NOW)
LEVEL_AT = T0 + timedelta(days=1)  # inside the level window [T0, T0 + 7 d)
RECENT_AT = NOW - timedelta(days=1)  # inside the recent window


@dataclass
class Env:
    tmp: Path
    url: str
    db: Database
    store: AdapterStore
    limits: ValidationLimits
    base_dir: Path
    acme: str
    beta: str
    adapter_src: Path

    def register(self, tenant_id: str, name: str = "support", *, activate: bool = True) -> VersionInfo:
        return registry.register_dir(
            self.db,
            self.store,
            self.limits,
            tenant_id=tenant_id,
            name=name,
            source_dir=self.adapter_src,
            base_model_name="SmolLM2-135M-Instruct",
            activate=activate,
            actor="test",
        )

    def promoted_at(self, version_id: str, when: datetime | None) -> None:
        with self.db.session() as s:
            s.get(AdapterVersion, version_id).promoted_at = when  # type: ignore[union-attr]

    def rate(
        self,
        tenant_id: str,
        version_id: str | None,
        when: datetime,
        *,
        good: int = 0,
        bad: int = 0,
        corrected: int = 0,
        model: str = "support",
    ) -> list[str]:
        """`good` + `bad` rated interactions at `when`; the first `corrected` of them also
        get a correction (a separate, unrated feedback row a minute later)."""
        iids = []
        with self.db.session() as s:
            for i, rating in enumerate(["good"] * good + ["bad"] * bad):
                iid = new_id("chatcmpl")
                iids.append(iid)
                s.add(
                    Interaction(
                        id=iid,
                        tenant_id=tenant_id,
                        endpoint="chat.completions",
                        model=model,
                        adapter_version_id=version_id,
                        request={"messages": [{"role": "user", "content": f"q{i}"}]},
                        response_text="a",
                        status_code=200,
                        created_at=when,
                    )
                )
                s.add(self._feedback(tenant_id, iid, version_id, model, when, rating=rating))
                if i < corrected:
                    s.add(
                        self._feedback(
                            tenant_id, iid, version_id, model, when + timedelta(minutes=1), correction="better"
                        )
                    )
        return iids

    def feedback(self, tenant_id: str, n: int, *, model: str = "support", when: datetime | None = None) -> None:
        """`n` plain feedback rows naming `model` (what due_retrains counts)."""
        with self.db.session() as s:
            for _ in range(n):
                s.add(
                    self._feedback(tenant_id, None, None, model, when or utcnow() - timedelta(minutes=5), rating="good")
                )

    @staticmethod
    def _feedback(
        tenant_id: str,
        iid: str | None,
        version_id: str | None,
        model: str,
        when: datetime,
        *,
        rating: str | None = None,
        correction: str | None = None,
    ) -> Feedback:
        return Feedback(
            id=new_id("fb"),
            tenant_id=tenant_id,
            interaction_id=iid,
            adapter_version_id=version_id,
            model=model,
            rating=rating,
            correction=correction,
            messages=None if iid else [{"role": "user", "content": "q"}],
            created_at=when,
        )

    def job(
        self,
        tenant_id: str,
        adapter_name: str,
        status: str = "succeeded",
        *,
        when: datetime | None = None,
        source: str = "api",
    ) -> str:
        """A training job for `adapter_name` created at `when` (default: now)."""
        job_id = new_id("ftjob")
        with self.db.session() as s:
            s.add(
                Job(
                    id=job_id,
                    tenant_id=tenant_id,
                    status=status,
                    method="supervised",
                    model="SmolLM2-135M-Instruct",
                    adapter_name=adapter_name,
                    hyperparameters={},
                    source=source,
                    created_at=when or utcnow(),
                )
            )
        return job_id

    def set_status(self, job_id: str, status: str) -> None:
        with self.db.session() as s:
            s.get(Job, job_id).status = status  # type: ignore[union-attr]


def promoted(env: Env, tenant_id: str | None = None, name: str = "support") -> VersionInfo:
    v = env.register(tenant_id or env.acme, name)
    env.promoted_at(v.id, T0)
    return v
