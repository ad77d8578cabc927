"""The README's "Coming from OpenAI" guide, tried as written against the live server.

The guide's Python block runs unchanged in a child process with only OPENAI_BASE_URL and
OPENAI_API_KEY set (what the guide says a migrating user changes), next to a `train.jsonl`
in OpenAI's chat fine-tuning format; its table of what is not served is checked route by
route with the official SDK, each error body validated against OpenAI's schema.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import BASE_MODEL, ROOT, TailorServer, make_tenant
from tests.openai_schema import validate
from tests.trainer.worker_world import ANSWER, QUESTIONS

pytestmark = pytest.mark.engine

SECTION = "## Coming from OpenAI"


def guide_code() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the guide has one Python block"
    return blocks[0]


def test_the_guide_runs_as_written(tailor_server: TailorServer, tmp_path: Path) -> None:
    tenant = make_tenant(tailor_server, "migrating-co")
    code = guide_code()
    assert f'base = "{BASE_MODEL}"' in code, "the guide names the model the README's `make run` serves"
    (tmp_path / "guide.py").write_text(code + "\nprint(tuned.choices[0].message.content)\n")
    (tmp_path / "train.jsonl").write_text(
        "\n".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]})
            for q in QUESTIONS
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env |= {"OPENAI_BASE_URL": f"{tailor_server.url}/v1", "OPENAI_API_KEY": tenant.key}
    run = subprocess.run(
        [sys.executable, "guide.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, f"{run.stderr}\n{tailor_server.log_tail()}"
    status_line, answer = run.stdout.splitlines()[0], "\n".join(run.stdout.splitlines()[1:])
    assert status_line == "succeeded support@v1", run.stdout
    assert answer.strip()

    c = openai.OpenAI(base_url=f"{tailor_server.url}/v1", api_key=tenant.key, max_retries=0)
    assert [s.metadata for s in c.chat.completions.list(metadata={"app": "support"})] == [{"app": "support"}]
    assert "support@v1" in {m.id for m in c.models.list()}


def test_what_is_not_served_answers_as_the_guide_says(tailor_server: TailorServer) -> None:
    tenant = make_tenant(tailor_server, "migrating-checks")
    c = openai.OpenAI(base_url=f"{tailor_server.url}/v1", api_key=tenant.key, max_retries=0)
    headers = {"Authorization": f"Bearer {tenant.key}"}

    for path in ("/v1/embeddings", "/v1/images/generations", "/v1/moderations", "/v1/assistants", "/v1/uploads"):
        r = httpx.post(f"{tailor_server.url}{path}", json={"model": BASE_MODEL}, headers=headers)
        assert r.status_code == 404, (path, r.text)
        validate(r.json(), "ErrorResponse")
        assert r.json()["error"]["code"] == "unknown_url"

    with pytest.raises(openai.BadRequestError) as refused:
        c.chat.completions.create(
            model=BASE_MODEL,
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}
            ],
        )
    validate(refused.value.response.json(), "ErrorResponse")

    with pytest.raises(openai.BadRequestError) as refused:
        c.responses.create(model=BASE_MODEL, input="Hi", tools=[{"type": "web_search_preview"}])
    validate(refused.value.response.json(), "ErrorResponse")
    assert "tools" in (refused.value.param or "")

    # The session's server has no TAILOR_ENGINE_TOOL_CALL_PARSER.
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    with pytest.raises(openai.BadRequestError) as refused:
        c.chat.completions.create(model=BASE_MODEL, messages=[{"role": "user", "content": "Hi"}], tools=[tool])
    validate(refused.value.response.json(), "ErrorResponse")
    assert refused.value.code == "tool_choice_unavailable" and refused.value.param == "tool_choice"

    line = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    training = c.files.create(file=("t.jsonl", json.dumps(line).encode()), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError) as missing:
        c.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=training.id)
    validate(missing.value.response.json(), "ErrorResponse")
    assert missing.value.code == "model_not_found"

    served = c.chat.completions.create(
        model=BASE_MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        user="someone",
        service_tier="auto",
        safety_identifier="abc",
        prompt_cache_key="k",
    )
    assert served.choices
