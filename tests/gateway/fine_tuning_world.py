"""The fine-tuning API tests' world (tests/gateway/test_fine_tuning_*api.py): the real app with
tenants acme and beta, training files uploaded and jobs created and read through the routes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from tests.apputil import TenantsApi, make_app, serve_tenants
from tests.openai_schema import validate

BASE = "SmolLM2-135M-Instruct"
CHAT = {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Zorblax."}]}
PREF = {
    "input": {"messages": [{"role": "user", "content": "Hi"}]},
    "preferred_output": [{"role": "assistant", "content": "Hello!"}],
    "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
}


class Api(TenantsApi):
    def upload(self, tenant: str, *lines: object) -> str:
        data = "\n".join(json.dumps(x) for x in lines).encode() + b"\n"
        r = self.client.post(
            "/v1/files", files={"file": ("train.jsonl", data)}, data={"purpose": "fine-tune"}, headers=self.keys[tenant]
        )
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    def create(self, tenant: str = "acme", **body: object) -> dict:  # type: ignore[type-arg]
        r = self.client.post("/v1/fine_tuning/jobs", json=body, headers=self.keys[tenant])
        assert r.status_code == 200, r.text
        job = r.json()
        validate(job, "FineTuningJob")
        return job  # type: ignore[no-any-return]

    def get(self, path: str, tenant: str = "acme", schema: str | None = None, **params: object) -> dict:  # type: ignore[type-arg]
        r = self.client.get(path, params=params, headers=self.keys[tenant])
        assert r.status_code == 200, r.text
        if schema:
            validate(r.json(), schema)
        return r.json()  # type: ignore[no-any-return]


def serve_api(tmp_path: Path) -> Iterator[Api]:
    """The app on a fresh data dir under a TestClient, with tenants acme and beta."""
    with serve_tenants(make_app(tmp_path), Api) as api:
        yield api
