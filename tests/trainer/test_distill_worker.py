"""A distillation teacher on loopback: what the trainer worker sends it, and what the teacher
must not be able to do to a job (answers over the cap, bytes dripped past the deadline,
retries past the teacher phase, a cancelled job's teacher phase going on).
"""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import Settings
from core.errors import TailorError
from tests.core.test_outbound import Reply, local_server
from tests.trainer.teacher_doubles import LOOPBACK_ALLOWED, USER, completion, teacher
from trainer import distill
from trainer.compute.recipe import TrainingCancelled
from trainer.distill import DistillSpec, TeacherSpec, remote


@dataclass
class Teacher:
    """A teacher endpoint on 127.0.0.1 whose every answer `behave(handler, n)` writes (n counts from 1)."""

    port: int
    seen: list[dict[str, str]]  # the headers of every request

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@contextmanager
def teacher_server(behave: Callable[[BaseHTTPRequestHandler, int], None]) -> Iterator[Teacher]:
    seen: list[dict[str, str]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
            self.rfile.read(int(self.headers.get("content-length") or 0))
            with lock:
                seen.append({k.lower(): v for k, v in self.headers.items()})
                n = len(seen)
            with suppress(OSError):  # the trainer hung up: what these tests want
                behave(self, n)
            self.close_connection = True

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Teacher(server.server_address[1], seen)
    finally:
        server.shutdown()
        server.server_close()


def answer_with(handler: BaseHTTPRequestHandler, text: str | None, delay_s: float = 0.0) -> None:
    time.sleep(delay_s)
    body = json.dumps(completion(text)).encode()
    handler.send_response(200)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class Worker:
    """A trainer worker over a fresh database; the jobs here end before any training."""

    def __init__(self, tmp: Path, **settings: Any) -> None:
        from adapters.store import AdapterStore
        from core.blobs import BlobStore
        from core.db import Database, migrate
        from core.ids import new_id
        from core.models import Tenant
        from trainer.worker import Worker

        self.settings = Settings(
            data_dir=tmp,
            outbound_allow_http=True,
            outbound_allow_hosts="127.0.0.1",  # type: ignore[arg-type]
            teacher_concurrency=2,
            **settings,
        )
        migrate(self.settings.database_url or "")
        self.db = Database(self.settings.database_url or "")
        self.blobs = BlobStore(self.settings.blob_store_url or "")
        store = AdapterStore(self.settings.adapter_store_url or "", self.settings.cache_dir / "adapters")
        self.tenant = new_id("ten")
        with self.db.session() as s:
            s.add(Tenant(id=self.tenant, name="acme"))
        self.worker = Worker(self.settings, self.db, store, self.blobs, worker_id="w-test")

    def job(self, teacher: dict[str, Any], inputs: int = 4) -> str:
        from trainer import files, jobs

        lines = [json.dumps({"messages": [{"role": "user", "content": f"question {i}?"}]}) for i in range(inputs)]
        upload = files.upload_file(
            self.db, self.blobs, self.tenant, "inputs.jsonl", "\n".join(lines).encode(), "fine-tune"
        )
        # Stored as given: a job queued before the operator's settings changed.
        spec = DistillSpec(teacher=TeacherSpec(**teacher), max_tokens=8)
        job = jobs.submit(
            self.db,
            self.tenant,
            method="distillation",
            model=self.settings.base_model_name,
            adapter_name="lite",
            training_file=upload.id,
            hyperparameters={"max_steps": 1},
            config=spec.to_json(),
            actor="test",
        )
        return job.id

    def run(self, job_id: str) -> Any:
        from trainer import jobs

        assert self.worker.run_once(job_id)
        return jobs.get_job(self.db, self.tenant, job_id)

    def events(self, job_id: str) -> list[str]:
        from trainer import job_records

        return [e.message for e in job_records.list_events(self.db, self.tenant, job_id, limit=100)[0]]


def test_the_worker_sends_a_key_variable_only_to_its_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEACHER_KEY", "sk-from-the-trainer-host")
    with teacher_server(lambda h, _n: answer_with(h, "")) as server:
        env = Worker(tmp_path / "elsewhere", teacher_key_env_allowlist="TEACHER_KEY=api.openai.com")
        elsewhere = env.run(env.job({"model": "m", "base_url": server.url, "api_key_env": "TEACHER_KEY"}))
        assert elsewhere.status == "failed"
        assert elsewhere.error["code"] == "teacher_key_env_not_allowed"
        assert elsewhere.error["param"] == "method.distillation.teacher.api_key_env"
        assert server.seen == []  # refused before anything was sent

        env = Worker(tmp_path / "bound", teacher_key_env_allowlist="TEACHER_KEY=127.0.0.1")
        bound = env.run(env.job({"model": "m", "base_url": server.url, "api_key_env": "TEACHER_KEY"}))
        # The teacher was asked, with the key; its empty answers leave nothing to train on.
        assert bound.error["code"] == "no_training_data", bound.error
        assert {h["authorization"] for h in server.seen} == {"Bearer sk-from-the-trainer-host"}


def test_the_worker_checks_the_binding_again_before_reading_the_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, teacher_key_env_allowlist="K=api.openai.com")  # type: ignore[arg-type]
    with pytest.raises(TailorError) as e:
        distill.teacher_api_key(
            TeacherSpec(model="m", base_url="https://attacker.example/v1", api_key_env="K"), settings
        )
    assert e.value.code == "teacher_key_env_not_allowed"


def big_answer(total: int, sent: list[int]) -> Callable[[BaseHTTPRequestHandler, int], None]:
    """A valid completion of `total` bytes, streamed without a length; `sent` counts what got out."""

    def behave(h: BaseHTTPRequestHandler, _n: int) -> None:
        h.send_response(200)
        h.send_header("content-type", "application/json")
        h.send_header("connection", "close")
        h.end_headers()
        head, tail = b'{"choices": [{"message": {"role": "assistant", "content": "', b'"}}]}'
        h.wfile.write(head)
        chunk = b"x" * 65536
        for _ in range((total - len(head) - len(tail)) // len(chunk)):
            h.wfile.write(chunk)
            sent[0] += len(chunk)
        h.wfile.write(tail)

    return behave


def test_an_answer_over_the_cap_fails_the_job_without_being_read(tmp_path: Path) -> None:
    sent = [0]
    with teacher_server(big_answer(256 * 2**20, sent)) as server:
        env = Worker(tmp_path)
        started = time.monotonic()
        done = env.run(env.job({"model": "m", "base_url": server.url}, inputs=1))
    assert done.status == "failed"
    assert done.error["code"] == "teacher_failed"
    assert done.error["message"] == (
        "the teacher endpoint at 127.0.0.1 answered more than 4 MiB, the most Tailor reads of one answer"
    )
    # Read up to the cap, then the connection went: the rest of the 256 MiB was never sent.
    assert sent[0] < 64 * 2**20, sent
    assert time.monotonic() - started < 30


def test_an_answer_over_the_cap_is_not_held_in_memory() -> None:
    sent = [0]
    with teacher_server(big_answer(64 * 2**20, sent)) as server:
        tracemalloc.start()
        try:
            with pytest.raises(TailorError, match="answered more than 1 MiB"):
                teacher(None, base_url=server.url, policy=LOOPBACK_ALLOWED, max_reply_bytes=2**20).answer([[USER]])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 8 * 2**20, peak
    # A declared length over the cap is refused before any of the body is read.
    capped = {"policy": LOOPBACK_ALLOWED, "max_reply_bytes": 2**20}
    with local_server(lambda _p: Reply(200, b" " * (2**20 + 1))) as declared, pytest.raises(TailorError):
        teacher(None, base_url=f"{declared.url}/v1", **capped).answer([[USER]])


def drip(where: str) -> Callable[[BaseHTTPRequestHandler, int], None]:
    """A valid answer, one byte every 0.1 s: of its headers or of its body. Never silent for long."""

    def behave(h: BaseHTTPRequestHandler, _n: int) -> None:
        body = json.dumps(completion("slow")).encode()
        head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        slow, fast = (head, body) if where == "headers" else (b"", head + body)
        for i in range(len(slow)):
            h.wfile.write(slow[i : i + 1])
            h.wfile.flush()
            time.sleep(0.1)
        h.wfile.write(fast[: len(fast) // 2] if where == "body" else fast)
        h.wfile.flush()
        if where == "body":
            for i in range(len(fast) // 2, len(fast)):
                h.wfile.write(fast[i : i + 1])
                h.wfile.flush()
                time.sleep(0.1)

    return behave


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_teacher_dripping_bytes_is_cut_at_the_request_deadline(where: str) -> None:
    with teacher_server(drip(where)) as server:
        sleeps: list[float] = []
        started = time.monotonic()
        slow = teacher(None, sleeps, base_url=server.url, policy=LOOPBACK_ALLOWED, concurrency=1, timeout_s=0.5)
        with pytest.raises(TailorError) as e:
            slow.answer([[USER]])
        took = time.monotonic() - started
    assert (e.value.status, e.value.code) == (502, "teacher_failed")
    assert e.value.message == "the teacher endpoint at 127.0.0.1 did not answer within 0.5 s"
    # each attempt cut at its 0.5 s, though the teacher never went quiet for a whole read timeout
    assert len(server.seen) == distill.TEACHER_ATTEMPTS and len(sleeps) == distill.TEACHER_ATTEMPTS - 1
    assert took < distill.TEACHER_ATTEMPTS * 0.5 + 2, took


def test_retries_stop_at_the_teacher_phase_deadline() -> None:
    sleeps: list[float] = []
    busy = teacher(
        lambda _r: httpx.Response(503, headers={"retry-after": "20"}), sleeps, concurrency=1, phase_timeout_s=10
    )
    with pytest.raises(TailorError) as e:
        busy.answer([[USER], [USER]])
    assert e.value.message == (
        "the teacher endpoint at teacher.example did not answer all 2 inputs within the teacher phase's limit of 10 s"
    )
    assert sleeps == []  # waiting the 20 s asked for would pass the phase's 10 s: it fails instead
    assert distill.phase_limit_s(2, 4, 120) == distill.MIN_TEACHER_PHASE_S
    assert distill.phase_limit_s(1000, 4, 120) == 2 * 250 * 120


def test_cancelling_stops_the_teacher_phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer import jobs

    monkeypatch.setattr(remote, "STOP_CHECK_S", 0.0)
    env = Worker(tmp_path)
    job_id: list[str] = []

    def behave(h: BaseHTTPRequestHandler, n: int) -> None:
        if n == 3:
            jobs.cancel_job(env.db, env.tenant, job_id[0], actor="test")
        answer_with(h, f"answer {n}", delay_s=0.1)

    with teacher_server(behave) as server:
        job_id.append(env.job({"model": "m", "base_url": server.url}, inputs=200))
        started = time.monotonic()
        done = env.run(job_id[0])
        took = time.monotonic() - started
    assert done.status == "cancelled"
    assert len(server.seen) < 10, len(server.seen)  # not the 200 inputs
    assert took < 5, took
    assert any("cancelled" in m for m in env.events(job_id[0]))


def test_a_cancelled_teacher_phase_makes_no_further_request() -> None:
    asked: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(1)
        return httpx.Response(200, json=completion("ok"))

    stop = iter([False, False, True])
    with pytest.raises(TrainingCancelled):
        teacher(handler, concurrency=1, should_stop=lambda: next(stop, True), stop_check_s=0).answer([[USER]] * 20)
    assert len(asked) == 1
