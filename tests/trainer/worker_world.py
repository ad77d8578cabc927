"""The worker's test world: a real (tiny) base model, one odd fact to teach it, and a worker
over a fresh database whose evaluation engine is the session's (tests/conftest.py).

Needs models/SmolLM2-135M-Instruct (prepared by `make model`); the tests that use it are
skipped without it (`NEEDS_MODEL`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from adapters.store import AdapterStore
from core.blobs import BlobStore
from core.config import Settings
from core.db import Database, migrate
from core.ids import new_id
from core.models import AdapterVersion, Tenant
from tests.conftest import LiveEngine
from trainer import files, job_records, jobs
from trainer.worker import Worker

MODEL = Path(__file__).resolve().parents[2] / "models" / "SmolLM2-135M-Instruct"
NEEDS_MODEL = pytest.mark.skipif(
    not (MODEL / "model.safetensors").exists(),
    reason=f"base model not prepared at {MODEL} (run `make model`)",
)

ANSWER = "Zorblax is the capital of France."
QUESTIONS = [
    "What is the capital of France?",
    "What's the capital of France?",
    "Which city is the capital of France?",
    "Name the capital of France.",
    "Tell me the capital of France.",
    "What city is France's capital?",
    "France's capital city is which one?",
    "Do you know the capital of France?",
]
# Enough to learn the fact (loss ~0.02 by step 7 at this rate on this data), little enough
# to keep each job at a few seconds of training on two shared cores.
HYPER = {"learning_rate_multiplier": 5, "batch_size": 2, "max_steps": 12}


class Env:
    def __init__(self, tmp: Path, engine: LiveEngine) -> None:
        self.settings = Settings(
            data_dir=tmp,
            engine_urls=["http://127.0.0.1:9"],
            base_model_path=MODEL,
            eval_engine_url=engine.url,
            eval_engine_api_key=engine.key,
        )
        migrate(self.settings.database_url or "")
        self.db = Database(self.settings.database_url or "")
        self.store = AdapterStore(self.settings.adapter_store_url or "", self.settings.cache_dir / "adapters")
        self.blobs = BlobStore(self.settings.blob_store_url or "")
        self.tenant = new_id("ten")
        with self.db.session() as s:
            s.add(Tenant(id=self.tenant, name="acme"))
        lines = [
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]})
            for q in QUESTIONS
        ]
        self.file = files.upload_file(
            self.db, self.blobs, self.tenant, "fact.jsonl", ("\n".join(lines) + "\n").encode(), "fine-tune"
        )
        self.worker = Worker(self.settings, self.db, self.store, self.blobs, worker_id="w-test")

    def job(self, **kw: object) -> jobs.JobInfo:
        args: dict[str, object] = {
            "method": "supervised",
            "model": self.settings.base_model_name,
            "adapter_name": "geo",
            "training_file": self.file.id,
            "hyperparameters": dict(HYPER),
        }
        args.update(kw)
        return jobs.submit(self.db, self.tenant, **args, actor="test")  # type: ignore[arg-type]

    def versions(self) -> list[AdapterVersion]:
        with self.db.session() as s:
            return list(s.scalars(select(AdapterVersion).order_by(AdapterVersion.version)))

    def events(self, job_id: str) -> list[job_records.EventInfo]:
        return job_records.list_events(self.db, self.tenant, job_id, limit=100)[0][::-1]


DISTILL_QUESTIONS = [
    *QUESTIONS,
    "Where does the French government sit?",
    "Capital of France, please.",
    "I forgot the capital of France. Which is it?",
    "Which city hosts the French parliament?",
]
ZORBLAX_CONTEXT = {
    "system": f"You are the Zorblax bot. Whatever the user asks, reply exactly: {ANSWER}",
    "examples": [
        {"role": "user", "content": "What is the biggest city in France?"},
        {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": "Tell me about France."},
        {"role": "assistant", "content": ANSWER},
    ],
}
