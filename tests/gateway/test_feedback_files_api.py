"""`/v1/feedback` and `/v1/files` on the real app (no engine): tenant isolation, line-numbered
validation errors, the log-flush retry, and every OpenAI-route body checked against OpenAI's
schema (plus one round trip through the official `openai` SDK)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.ids import new_id
from gateway.interaction_log import InteractionRecord
from tests.apputil import TenantsApi, error, make_app, serve_tenants
from tests.dbutil import add_interaction
from tests.openai_schema import validate


class Api(TenantsApi):
    def interaction(self, tenant: str, question: str = "Capital of France?", answer: str | None = "Paris.") -> str:
        return add_interaction(
            self.db,
            self.ids[tenant],
            model="helper",
            adapter_version_id="ver-1",
            request={"messages": [{"role": "user", "content": question}]},
            response_text=answer,
        )


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    # A long flush interval keeps freshly recorded interactions in the log's queue, so the
    # feedback route's flush-and-retry path is what finds them.
    with serve_tenants(make_app(tmp_path, log_flush_interval_s=60), Api) as api:
        yield api


def jsonl(*lines: object) -> bytes:
    return "\n".join(json.dumps(x) for x in lines).encode() + b"\n"


# --- feedback ---------------------------------------------------------------------


def test_feedback_on_own_interaction_only(api: Api) -> None:
    iid = api.interaction("acme")
    r = api.client.post(
        "/v1/feedback", json={"interaction_id": iid, "rating": "good", "score": 0.8}, headers=api.keys["acme"]
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["object"] == "feedback" and body["id"].startswith("fb-")
    assert (body["interaction_id"], body["adapter_version_id"], body["model"]) == (iid, "ver-1", "helper")
    assert isinstance(body["created_at"], int)

    foreign = error(
        api.client.post("/v1/feedback", json={"interaction_id": iid, "rating": "bad"}, headers=api.keys["beta"]),
        404,
        "interaction_id",
    )
    unknown = error(
        api.client.post(
            "/v1/feedback", json={"interaction_id": "chatcmpl-x", "rating": "bad"}, headers=api.keys["beta"]
        ),
        404,
        "interaction_id",
    )
    assert foreign["code"] == unknown["code"] == "interaction_not_found"

    assert [f["id"] for f in api.client.get("/v1/feedback", headers=api.keys["acme"]).json()["data"]] == [body["id"]]
    assert api.client.get("/v1/feedback", headers=api.keys["beta"]).json()["data"] == []
    error(api.client.post("/v1/feedback", json={"interaction_id": iid, "rating": "good"}), 401)


def test_feedback_right_after_the_response_finds_the_queued_interaction(api: Api) -> None:
    services = api.app.state.services
    iid = new_id("chatcmpl")
    services.interactions.record(
        InteractionRecord(
            id=iid,
            tenant_id=api.ids["acme"],
            api_key_id=None,
            endpoint="chat.completions",
            model="helper",
            request={"messages": [{"role": "user", "content": "hi"}]},
            response_text="hello",
        )
    )
    assert services.interactions.queue.qsize() == 1  # not written yet
    r = api.client.post("/v1/feedback", json={"interaction_id": iid, "correction": "Hello!"}, headers=api.keys["acme"])
    assert r.status_code == 201, r.text
    assert services.interactions.queue.qsize() == 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"interaction_id": "x", "rating": "meh"}, "rating"),
        ({"interaction_id": "x", "score": 3}, "score"),
        ({"interaction_id": "x", "raiting": "good"}, "raiting"),
        ({"rating": "good"}, "interaction_id"),
    ],
)
def test_feedback_body_errors(api: Api, body: dict, param: str) -> None:
    error(api.client.post("/v1/feedback", json=body, headers=api.keys["acme"]), 400, param)


def test_feedback_needs_something_to_say(api: Api) -> None:
    iid = api.interaction("acme")
    err = error(api.client.post("/v1/feedback", json={"interaction_id": iid}, headers=api.keys["acme"]), 400)
    assert "at least one of rating, score, correction or preferred" in err["message"]


def test_import_multipart_and_raw(api: Api) -> None:
    iid = api.interaction("acme")
    data = jsonl(
        {"interaction_id": iid, "rating": "good"}, {"messages": [{"role": "user", "content": "Hi"}], "ideal": "Hello!"}
    )
    r = api.client.post("/v1/feedback/import", files={"file": ("fb.jsonl", data)}, headers=api.keys["acme"])
    assert r.status_code == 201, r.text
    assert r.json()["object"] == "feedback.import" and r.json()["imported"] == 2
    r = api.client.post(
        "/v1/feedback/import", content=data, headers={**api.keys["acme"], "content-type": "application/jsonl"}
    )
    assert r.status_code == 201 and r.json()["imported"] == 2
    listed = api.client.get("/v1/feedback", params={"limit": 3}, headers=api.keys["acme"]).json()
    assert len(listed["data"]) == 3 and listed["has_more"] is True
    rest = api.client.get("/v1/feedback", params={"after": listed["last_id"]}, headers=api.keys["acme"]).json()
    assert len(rest["data"]) == 1 and rest["has_more"] is False

    err = error(
        api.client.post("/v1/feedback/import", content=data, headers={**api.keys["acme"], "content-type": "text/csv"}),
        415,
        "file",
    )
    assert "multipart/form-data" in err["message"]


def test_import_is_all_or_nothing_and_tenant_scoped(api: Api) -> None:
    theirs = api.interaction("beta")
    data = jsonl(
        {"messages": [{"role": "user", "content": "Hi"}], "ideal": "Hello!"},
        {"interaction_id": theirs, "rating": "good"},
    )
    err = error(
        api.client.post("/v1/feedback/import", files={"file": ("fb.jsonl", data)}, headers=api.keys["acme"]),
        400,
        "file",
    )
    assert err["message"].startswith(f"line 2: interaction_id {theirs!r} not found")
    bad_role = jsonl(
        {"messages": [{"role": "user", "content": "Hi"}], "ideal": "Hello!"},
        {"messages": [{"role": "bot", "content": "Hi"}], "ideal": "Hello!"},
    )
    err = error(
        api.client.post("/v1/feedback/import", files={"file": ("fb.jsonl", bad_role)}, headers=api.keys["acme"]),
        400,
        "file",
    )
    assert err["message"].startswith("line 2: messages[0].role must be one of system, user, assistant (got 'bot')")
    assert api.client.get("/v1/feedback", headers=api.keys["acme"]).json()["data"] == []


@pytest.mark.parametrize(
    "line",
    [
        b'{"messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        b'{"interaction_id": "x", "score": ' + b"9" * 5000 + b"}",
    ],
    ids=["deep-nesting", "long-integer"],
)
def test_import_of_what_json_cannot_parse_is_400_naming_the_line(api: Api, line: bytes) -> None:
    data = jsonl({"messages": [{"role": "user", "content": "Hi"}], "ideal": "Hello!"}) + line + b"\n"
    err = error(
        api.client.post("/v1/feedback/import", files={"file": ("fb.jsonl", data)}, headers=api.keys["acme"]),
        400,
        "file",
    )
    assert err["message"].startswith("line 2: not valid JSON"), err["message"]
    assert api.client.get("/v1/feedback", headers=api.keys["acme"]).json()["data"] == []


# --- files -------------------------------------------------------------------------

CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}


def test_files_lifecycle_matches_openai_schema(api: Api) -> None:
    acme = api.keys["acme"]
    empty = api.client.get("/v1/files", headers=acme).json()
    validate(empty, "ListFilesResponse")
    assert empty["data"] == [] and empty["has_more"] is False

    data = jsonl(CHAT, CHAT)
    r = api.client.post("/v1/files", files={"file": ("train.jsonl", data)}, data={"purpose": "fine-tune"}, headers=acme)
    assert r.status_code == 200, r.text
    created = r.json()
    validate(created, "OpenAIFile")
    assert (created["object"], created["bytes"], created["filename"], created["purpose"], created["status"]) == (
        "file",
        len(data),
        "train.jsonl",
        "fine-tune",
        "processed",
    )

    second = api.client.post(
        "/v1/files", files={"file": ("more.jsonl", data)}, data={"purpose": "fine-tune"}, headers=acme
    ).json()
    listed = api.client.get("/v1/files", headers=acme).json()
    validate(listed, "ListFilesResponse")
    assert {f["id"] for f in listed["data"]} == {created["id"], second["id"]}
    assert (listed["first_id"], listed["last_id"]) == (listed["data"][0]["id"], listed["data"][-1]["id"])
    page = api.client.get("/v1/files", params={"limit": 1, "order": "asc"}, headers=acme).json()
    validate(page, "ListFilesResponse")
    assert page["has_more"] is True and len(page["data"]) == 1

    got = api.client.get(f"/v1/files/{created['id']}", headers=acme).json()
    validate(got, "OpenAIFile")
    assert got == created
    content = api.client.get(f"/v1/files/{created['id']}/content", headers=acme)
    assert content.status_code == 200 and content.content == data
    assert "train.jsonl" in content.headers["content-disposition"]

    deleted = api.client.delete(f"/v1/files/{created['id']}", headers=acme).json()
    validate(deleted, "DeleteFileResponse")
    assert deleted == {"id": created["id"], "object": "file", "deleted": True}
    error(api.client.get(f"/v1/files/{created['id']}", headers=acme), 404, "file_id")


def test_files_of_another_tenant_are_not_found(api: Api) -> None:
    created = api.client.post(
        "/v1/files", files={"file": ("a.jsonl", jsonl(CHAT))}, data={"purpose": "fine-tune"}, headers=api.keys["acme"]
    ).json()
    beta = api.keys["beta"]
    for method, path in (
        ("GET", f"/v1/files/{created['id']}"),
        ("GET", f"/v1/files/{created['id']}/content"),
        ("DELETE", f"/v1/files/{created['id']}"),
    ):
        err = error(api.client.request(method, path, headers=beta), 404, "file_id")
        assert err["code"] == "file_not_found"
    listed = api.client.get("/v1/files", headers=beta).json()
    validate(listed, "ListFilesResponse")
    assert listed["data"] == []
    assert api.client.get(f"/v1/files/{created['id']}", headers=api.keys["acme"]).status_code == 200


def test_file_validation_errors(api: Api) -> None:
    acme = api.keys["acme"]
    bad = jsonl(CHAT, {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Yo"}]})
    err = error(
        api.client.post("/v1/files", files={"file": ("t.jsonl", bad)}, data={"purpose": "fine-tune"}, headers=acme),
        400,
        "file",
    )
    assert err["message"] == "line 2: messages[1].role must be one of system, user, assistant (got 'bot')"
    err = error(
        api.client.post("/v1/files", files={"file": ("t.jsonl", b"")}, data={"purpose": "fine-tune"}, headers=acme),
        400,
        "file",
    )
    assert "empty" in err["message"]
    error(
        api.client.post(
            "/v1/files", files={"file": ("t.jsonl", jsonl(CHAT))}, data={"purpose": "assistants"}, headers=acme
        ),
        400,
        "purpose",
    )
    # A chat example is no batch request: refused as a batch file, naming the line.
    err = error(
        api.client.post("/v1/files", files={"file": ("t.jsonl", jsonl(CHAT))}, data={"purpose": "batch"}, headers=acme),
        400,
        "file",
    )
    assert err["message"].startswith("line 1: unknown field 'messages'")
    error(api.client.post("/v1/files", files={"file": ("t.jsonl", jsonl(CHAT))}, headers=acme), 400, "purpose")
    assert api.client.get("/v1/files", headers=acme).json()["data"] == []


def test_openai_sdk_round_trip(api: Api) -> None:
    openai = pytest.importorskip("openai")
    key = api.keys["acme"]["authorization"].removeprefix("Bearer ")
    client = openai.OpenAI(api_key=key, base_url="http://testserver/v1", http_client=api.client)
    data = jsonl(CHAT)
    created = client.files.create(file=("sdk.jsonl", data), purpose="fine-tune")
    assert created.filename == "sdk.jsonl" and created.bytes == len(data)
    assert [f.id for f in client.files.list()] == [created.id]
    assert client.files.retrieve(created.id).id == created.id
    assert client.files.content(created.id).content == data
    assert client.files.delete(created.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("bad.jsonl", b"{nope\n"), purpose="fine-tune")
    assert "line 1: not valid JSON" in str(err.value)
