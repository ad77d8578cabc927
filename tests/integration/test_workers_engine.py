"""Two gateway workers in front of a real vLLM engine, through the official SDK.

No second vLLM server: the workers use the session's evaluation engine as their operator-run
engine (TAILOR_ENGINE_URLS), so this costs one more `tailor serve`, not one more engine.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from loadtests.metric_sums import metric_sums
from tests.conftest import LiveEngine
from tests.integration.conftest import BASE_MODEL, QUESTION, make_tenant, running_tailor
from tests.openai_schema import validate

pytestmark = pytest.mark.engine


def test_two_workers_answer_from_the_real_engine(tmp_path: Path, eval_engine: LiveEngine) -> None:
    env = {
        "TAILOR_WORKERS": "2",
        "TAILOR_ENGINE_URLS": eval_engine.url,
        "TAILOR_ENGINE_API_KEY": eval_engine.key,
        "TAILOR_RUN_TRAINER": "false",
    }
    with running_tailor(tmp_path, eval_engine, **env) as server:
        tenant = make_tenant(server, "acme")
        client = server.sdk(tenant)
        sent = 6
        for _ in range(sent):
            raw = client.chat.completions.with_raw_response.create(
                model=BASE_MODEL, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=16
            )
            validate(raw.http_response.json(), "CreateChatCompletionResponse")
            assert "Paris" in (raw.parse().choices[0].message.content or "")
        # Counted as each request ends, by whichever worker answered it; /metrics adds them up.
        deadline = time.monotonic() + 10
        while (totals := _metrics(server.url))["tailor_requests_total"] != sent and time.monotonic() < deadline:
            time.sleep(0.2)
        assert totals["tailor_requests_total"] == sent
        assert totals["tailor_gateway_processes"] == 2


def _metrics(url: str) -> dict[str, float]:
    return metric_sums(httpx.get(f"{url}/metrics", timeout=10).text)
