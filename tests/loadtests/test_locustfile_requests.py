"""The locustfile's requests and records, without a server or locust (tests.loadtests.locust_fakes).

TTFT and TPOT computed from a fake SSE stream with scripted chunk timings; failure handling of
plain and streamed requests (HTTP errors, error events, bad JSON, a stream without [DONE], a
body without choices); feedback posts; the records file with its meta lines and the
`interrupted` count of requests cut off by locust's run time (gevent.GreenletExit); and, in a
subprocess, that the stand-ins match real locust.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from loadtests.run_load import results as load_results
from tests.loadtests.locust_fakes import (
    ROOT,
    SUBPROCESS_TIMEOUT_S,
    FakeClient,
    FakeClock,
    FakeResponse,
    Locustfile,
    Post,
    make_user,
    ok_responder,
    options,
    read_jsonl,
    sse,
    stream_lines,
    write_tenants,
)

# --- locustfile: streamed requests, TTFT and TPOT -------------------------------------------


def stream_body() -> dict[str, Any]:
    return {"model": "support", "messages": [], "max_tokens": 8, "stream": True}


def test_stream_ttft_and_tpot_come_from_the_chunk_timings(lf: Locustfile, clock: FakeClock, tmp_path: Path) -> None:
    lines = stream_lines(
        ["Hel", "lo", " there", "!"],
        at=[0.2, 0.3, 0.4, 0.45],
        usage={"prompt_tokens": 12, "completion_tokens": 4},
        done_at=0.5,
    )
    client = FakeClient(lambda call: FakeResponse(200, lines=lines, clock=clock))
    user = make_user(lf, options(write_tenants(tmp_path)), client)
    record: dict[str, Any] = {}
    user._stream(stream_body(), record)

    assert record["ok"] is True and record["status"] == 200 and record["id"] == "chatcmpl-1"
    assert record["latency_ms"] == pytest.approx(500.0)  # until [DONE]
    assert record["ttft_ms"] == pytest.approx(200.0)  # the first content chunk, not the role chunk
    assert record["tpot_ms"] == pytest.approx((500.0 - 200.0) / 3)  # (latency - TTFT) / (tokens - 1)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (12, 4)
    response = client.posts[0].response
    assert response is not None and response.outcome == ("success", "")
    assert response.request_meta == {"response_time": pytest.approx(500.0), "response_length": 4}
    assert client.posts[0].stream is True and client.posts[0].name == "chat stream"
    fired = [(f["request_type"], f["name"], f["response_time"], f["response_length"]) for f in lf.events.request.fired]
    assert fired == [
        ("TTFT", "chat stream", pytest.approx(200.0), 4),
        ("TPOT", "chat stream", pytest.approx(100.0), 4),
    ]
    assert all(f["exception"] is None and f["context"] == {"tenant": "acme"} for f in lf.events.request.fired)


def test_stream_with_one_token_has_ttft_but_no_tpot(lf: Locustfile, clock: FakeClock, tmp_path: Path) -> None:
    lines = stream_lines(["x"], at=[0.15], usage={"prompt_tokens": 3, "completion_tokens": 1}, done_at=0.2)
    client = FakeClient(lambda call: FakeResponse(200, lines=lines, clock=clock))
    user = make_user(lf, options(write_tenants(tmp_path)), client)
    record: dict[str, Any] = {}
    user._stream(stream_body(), record)
    assert record["ttft_ms"] == pytest.approx(150.0) and "tpot_ms" not in record
    assert [f["request_type"] for f in lf.events.request.fired] == ["TTFT"]


def test_stream_without_content_has_neither_ttft_nor_tpot(lf: Locustfile, clock: FakeClock, tmp_path: Path) -> None:
    lines = stream_lines([], at=[], usage={"prompt_tokens": 3, "completion_tokens": 0}, done_at=0.2)
    client = FakeClient(lambda call: FakeResponse(200, lines=lines, clock=clock))
    user = make_user(lf, options(write_tenants(tmp_path)), client)
    record: dict[str, Any] = {}
    user._stream(stream_body(), record)
    assert record["ok"] is True and record["completion_tokens"] == 0
    assert "ttft_ms" not in record and "tpot_ms" not in record and lf.events.request.fired == []


@pytest.mark.parametrize(
    ("response_kwargs", "error", "latency_ms"),
    [
        (
            {"status_code": 429, "body": {"error": {"message": "rate limit exceeded", "type": "rate_limit"}}},
            "HTTP 429: rate limit exceeded",
            300.0,
        ),
        ({"status_code": 502, "text": "Bad Gateway"}, "HTTP 502: Bad Gateway", 300.0),
        (
            {"lines": [(0.4, sse({"id": "c", "choices": []})), (0.7, sse({"error": {"message": "engine died"}}))]},
            "error event: {'message': 'engine died'}",
            700.0,
        ),
        ({"lines": [(0.4, b"data: {not json")]}, "JSONDecodeError: ", 400.0),
        (
            {"lines": [(0.9, sse({"id": "c", "choices": [{"delta": {"content": "a"}}]}))]},
            "stream ended without [DONE]",
            900.0,
        ),
    ],
    ids=["http-error-json", "http-error-text", "error-event", "bad-json", "no-done"],
)
def test_stream_failures_are_reported_with_their_latency(
    lf: Locustfile, clock: FakeClock, tmp_path: Path, response_kwargs: dict[str, Any], error: str, latency_ms: float
) -> None:
    def respond(call: Post) -> FakeResponse:
        clock.now = 0.3  # headers (or the whole error body) after 300 ms
        return FakeResponse(**response_kwargs, clock=clock)

    client = FakeClient(respond)
    user = make_user(lf, options(write_tenants(tmp_path)), client)
    record: dict[str, Any] = {}
    user._stream(stream_body(), record)
    assert record["ok"] is False and record["status"] == response_kwargs.get("status_code", 200)
    assert record["error"].startswith(error)
    assert len(record["error"]) <= 300
    assert record["latency_ms"] == pytest.approx(latency_ms)  # until the failure was seen
    response = client.posts[0].response
    assert response is not None and response.outcome == ("failure", record["error"])
    assert response.request_meta["response_time"] == record["latency_ms"]
    assert "ttft_ms" not in record and lf.events.request.fired == []


def test_failed_stream_is_recorded_and_gets_no_feedback(lf: Locustfile, clock: FakeClock, tmp_path: Path) -> None:
    records = tmp_path / "records.jsonl"
    opts = options(write_tenants(tmp_path), stream_share=1.0, feedback_share=1.0, records_file=str(records))
    lf.module.RECORDS.open(opts.records_file)
    client = FakeClient(lambda call: FakeResponse(500, {"error": {"message": "boom"}}))
    user = make_user(lf, opts, client)
    user.chat()
    assert len(client.posts) == 1  # no feedback on a failed request
    [record] = read_jsonl(records)
    assert record["kind"] == "chat" and record["ok"] is False and record["status"] == 500
    assert record["error"] == "HTTP 500: boom"


# --- locustfile: plain requests and feedback ------------------------------------------------


def test_plain_request_records_latency_tokens_and_id(lf: Locustfile, clock: FakeClock, tmp_path: Path) -> None:
    def respond(call: Post) -> FakeResponse:
        clock.now = 0.25
        body = {"id": "chatcmpl-7", "choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 9}}
        return FakeResponse(200, body)

    client = FakeClient(respond)
    user = make_user(lf, options(write_tenants(tmp_path)), client)
    record: dict[str, Any] = {}
    user._plain({"model": "Base", "messages": []}, record)
    assert record == {
        "latency_ms": pytest.approx(250.0),
        "status": 200,
        "id": "chatcmpl-7",
        "prompt_tokens": 9,
        "completion_tokens": 0,  # missing in usage: 0, not an error
        "ok": True,
    }
    assert client.posts[0].name == "chat" and client.posts[0].stream is False
    assert client.posts[0].response is not None and client.posts[0].response.outcome == ("success", "")


@pytest.mark.parametrize(
    ("response", "error", "failure"),
    [
        (FakeResponse(200, {"id": "c", "choices": []}), "bad response body: no choices in the response", None),
        (FakeResponse(200, {"choices": [{}]}), "bad response body: 'id'", None),
        (FakeResponse(200, None, text="<html>"), "bad response body: not JSON", None),
        (
            FakeResponse(404, {"error": {"message": "model 'x' not found"}}),
            "model 'x' not found",
            "HTTP 404: model 'x' not found",
        ),
        (FakeResponse(500, None, text="x" * 500), "x" * 200, "HTTP 500: " + "x" * 200),
    ],
    ids=["no-choices", "no-id", "not-json", "http-error", "long-error-text"],
)
def test_plain_request_failures(
    lf: Locustfile, tmp_path: Path, response: FakeResponse, error: str, failure: str | None
) -> None:
    client = FakeClient(lambda call: response)
    user = make_user(lf, options(write_tenants(tmp_path)), client)
    record: dict[str, Any] = {}
    user._plain({"model": "Base", "messages": []}, record)
    # the record keeps the message (its status is in record["status"]); locust's failure names the status
    assert record["ok"] is False and record["error"] == error and record["status"] == response.status_code
    assert response.outcome == ("failure", failure or error)


def test_feedback_posts_the_completion_id_and_records_the_outcome(lf: Locustfile, tmp_path: Path) -> None:
    records = tmp_path / "records.jsonl"
    lf.module.RECORDS.open(str(records))
    statuses = iter([201, 422])
    client = FakeClient(lambda call: FakeResponse(next(statuses), {"error": {"message": "unknown interaction"}}))
    user = make_user(lf, options(write_tenants(tmp_path)), client)
    user._feedback("chatcmpl-1")
    user._feedback("chatcmpl-2")
    assert [(p.path, p.name, p.body["interaction_id"]) for p in client.posts] == [
        ("/v1/feedback", "feedback", "chatcmpl-1"),
        ("/v1/feedback", "feedback", "chatcmpl-2"),
    ]
    assert all(p.body["rating"] in ("good", "bad") for p in client.posts)
    outcomes = [p.response.outcome for p in client.posts if p.response is not None]
    assert outcomes == [("success", ""), ("failure", "HTTP 422: unknown interaction")]
    assert [(r["kind"], r["tenant"], r["ok"], r["status"]) for r in read_jsonl(records)] == [
        ("feedback", "acme", True, 201),
        ("feedback", "acme", False, 422),
    ]


# --- locustfile: records and the end of the run ---------------------------------------------


def test_request_cut_off_by_the_run_time_is_counted_as_interrupted(lf: Locustfile, tmp_path: Path) -> None:
    records = tmp_path / "nested" / "dir" / "records.jsonl"
    opts = options(write_tenants(tmp_path), records_file=str(records))
    lf.events.test_start.fire(environment=SimpleNamespace(parsed_options=opts))

    def cut_off(call: Post) -> FakeResponse:
        assert lf.module.RECORDS.in_flight == 1
        raise lf.greenlet_exit()

    user = make_user(lf, opts, FakeClient(cut_off))
    with pytest.raises(lf.greenlet_exit):
        user.chat()
    assert lf.module.RECORDS.in_flight == 0 and lf.module.RECORDS.interrupted == 1
    lf.events.test_stop.fire(environment=SimpleNamespace(parsed_options=opts))

    lines = read_jsonl(records)
    assert [(r["kind"], r["event"]) for r in lines] == [("meta", "start"), ("meta", "stop")]  # no chat record
    assert lines[1]["interrupted"] == 1 and lines[1]["t"] >= lines[0]["t"]
    # run_load reads the same file: meta by event, the rest as records
    recs, meta = load_results.read_records(records)
    assert recs == [] and set(meta) == {"start", "stop"} and meta["stop"]["interrupted"] == 1


def test_records_without_a_file_are_not_written(lf: Locustfile, tmp_path: Path) -> None:
    lf.events.test_start.fire(environment=SimpleNamespace(parsed_options=None))
    user = make_user(lf, options(write_tenants(tmp_path)), FakeClient(ok_responder()))
    user.chat()  # no error: writing is a no-op
    lf.events.test_stop.fire(environment=SimpleNamespace(parsed_options=None))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tenants.json"]


def test_error_text_prefers_the_openai_error_message(lf: Locustfile) -> None:
    error_text = lf.module._error_text
    assert error_text(FakeResponse(400, {"error": {"message": "bad"}})) == "bad"
    assert error_text(FakeResponse(400, {"detail": "other shape"}, text="raw body")) == "raw body"
    assert error_text(SimpleNamespace(json=lambda: {}, text="", error="ConnectionError")) == "ConnectionError"
    assert error_text(FakeResponse(400, {"error": {"message": "m" * 300}})) == "m" * 200


def test_loading_the_locustfile_here_leaves_no_stand_in_and_patches_nothing(lf: Locustfile) -> None:
    assert getattr(sys.modules.get("locust"), "events", None) is not lf.events
    assert getattr(sys.modules.get("gevent"), "GreenletExit", None) is not lf.greenlet_exit
    assert lf.module.gevent.GreenletExit is lf.greenlet_exit  # the module keeps the stand-in it ran with
    assert socket.socket.__module__ == "socket" and time.sleep.__module__ == "time"  # not gevent's


def test_the_locust_stand_ins_match_real_locust() -> None:
    code = r"""
import json, os
from locust import HttpUser
from locust.argument_parser import get_parser
import gevent
import loadtests.locustfile as lf

parser = get_parser(default_config_files=[])
defaults = vars(parser.parse_args(["-f", "loadtests/locustfile.py"]))
os.environ.update({"TAILOR_LOAD_STREAM_SHARE": "0.9", "TAILOR_LOAD_MAX_TOKENS": "64", "TAILOR_LOAD_TENANTS": "t.json"})
from_env = vars(get_parser(default_config_files=[]).parse_args(["-f", "loadtests/locustfile.py", "--zipf-s", "2"]))
keys = ["tenants_file", "api_key", "records_file", "stream_share", "long_share", "feedback_share", "zipf_s",
        "max_tokens", "min_tokens", "think_min", "think_max", "request_timeout"]
print(json.dumps({
    "is_http_user": issubclass(lf.TenantClient, HttpUser),
    "tasks": [t.__name__ for t in lf.TenantClient.tasks],
    "greenlet_exit_is_base_exception": issubclass(gevent.GreenletExit, BaseException),
    "greenlet_exit_is_exception": issubclass(gevent.GreenletExit, Exception),
    "defaults": {k: defaults[k] for k in keys},
    "from_env": {k: from_env[k] for k in ("stream_share", "max_tokens", "tenants_file", "zipf_s")},
}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["is_http_user"] is True
    assert result["tasks"] == ["chat"]
    assert result["greenlet_exit_is_base_exception"] is True and result["greenlet_exit_is_exception"] is False
    assert result["defaults"] == vars(options())
    assert result["from_env"] == {"stream_share": 0.9, "max_tokens": 64, "tenants_file": "t.json", "zipf_s": 2.0}
