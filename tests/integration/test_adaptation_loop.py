"""The whole loop on the real engine: traffic -> feedback -> training -> evaluation -> promotion.

A generated domain task the base model fails (routing tickets to internal queue codes):
the tenant's traffic through its adapter name is corrected through the feedback API,
a job trains on that feedback in the server's own trainer worker, the candidate beats
the current version on the held-out split, is promoted, and the same prompts through the
same `model` name are now answered correctly. Other tenants still get the base model.
"""

from __future__ import annotations

import io
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from loadtests.ticket_routing import Ticket, accuracy, tickets
from tests.integration.conftest import BASE_MODEL, MODEL_DIR, QUESTION, TailorServer, TenantKeys, make_tenant
from tests.openai_schema import validate

pytestmark = pytest.mark.engine


def identity_adapter(out: Path) -> Path:
    """A LoRA whose B matrices are zero: behaves exactly like the base model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    get_peft_model(
        model,
        LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    ).save_pretrained(out)
    return out


def tar_gz(directory: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(directory, arcname="adapter")
    return buf.getvalue()


def ask_all(c: openai.OpenAI, model: str, items: list[Ticket]) -> tuple[list[str], list[str]]:
    """Every ticket at once, as a product's traffic arrives: the engine batches them."""

    def ask(t: Ticket) -> tuple[str, str]:
        r = c.chat.completions.create(model=model, messages=t.messages(), temperature=0, max_tokens=8)
        return r.choices[0].message.content or "", r.id

    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(ask, items))
    return [answer for answer, _ in replies], [interaction_id for _, interaction_id in replies]


def test_feedback_trains_a_better_adapter_that_is_promoted(
    tailor_server: TailorServer, tenant_a: TenantKeys, tmp_path: Path
) -> None:
    tenant = make_tenant(tailor_server, "routeco")
    auth = {"Authorization": f"Bearer {tenant.key}"}
    c = tailor_server.sdk(tenant)
    r = httpx.put(f"{tailor_server.url}/v1/policy", headers=auth, json={"auto_promote": True})
    assert r.status_code == 200 and r.json()["auto_promote"] is True

    # v1 of "router" is an untrained adapter: the tenant's traffic starts at base-model quality.
    r = httpx.post(
        f"{tailor_server.url}/v1/adapters",
        headers=auth,
        data={"name": "router"},
        files={"file": ("router.tar.gz", tar_gz(identity_adapter(tmp_path / "identity")))},
        timeout=120,
    )
    assert r.status_code == 201, r.text

    items = tickets(per_queue=8, seed=0)
    before, interaction_ids = ask_all(c, "router", items)
    accuracy_before = accuracy(before, items)

    for t, interaction_id, answer in zip(items, interaction_ids, before, strict=False):
        body = {"interaction_id": interaction_id, "correction": t.queue}
        if answer.strip() == t.queue:
            body = {"interaction_id": interaction_id, "rating": "good"}
        r = httpx.post(f"{tailor_server.url}/v1/feedback", headers=auth, json=body)
        assert r.status_code == 201, r.text

    with tailor_server.admin() as admin:
        r = admin.post(
            "/admin/tenants/routeco/train",
            json={
                "adapter_name": "router",
                "method": "supervised",
                "hyperparameters": {"max_steps": 40, "batch_size": 4, "learning_rate_multiplier": 5},
            },
        )
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]

    deadline = time.monotonic() + 600
    while True:
        job = c.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, f"job still {job.status} after 10 minutes"
        time.sleep(0.5)
    raw = httpx.get(f"{tailor_server.url}/v1/fine_tuning/jobs/{job_id}", headers=auth).json()
    validate(raw, "FineTuningJob")
    assert job.status == "succeeded", raw.get("error")
    evaluation = httpx.get(f"{tailor_server.url}/v1/fine_tuning/jobs/{job_id}/evaluation", headers=auth).json()
    assert evaluation["decision"] == "promoted", evaluation
    assert evaluation["candidate"]["exact_match"] > evaluation["baseline"]["exact_match"]
    events = c.fine_tuning.jobs.list_events(job_id, limit=100).data
    assert any("train_loss" in (e.data or {}) for e in events)

    # The same prompts, the same model name: now the promoted version answers.
    time.sleep(0.6)  # the test server's lookup cache TTL
    after, _ = ask_all(c, "router", items)
    accuracy_after = accuracy(after, items)
    print(
        f"\nticket routing accuracy through model='router': before {accuracy_before:.2f}, after {accuracy_after:.2f}"
        f" (held-out: baseline {evaluation['baseline']['exact_match']:.2f},"
        f" candidate {evaluation['candidate']['exact_match']:.2f})"
    )
    assert accuracy_before <= 0.25
    assert accuracy_after >= 0.8

    lineage = httpx.get(f"{tailor_server.url}/v1/adapters/router/lineage", headers=auth).json()
    promoted = [v for v in lineage if v["serving"] == "active"][0]
    assert promoted["job_id"] == job_id and promoted["dataset_id"] and promoted["version"] == 2

    # Nobody else is affected: another tenant's base model still answers as before.
    other = openai.OpenAI(base_url=f"{tailor_server.url}/v1", api_key=tenant_a.key, max_retries=0)
    base = other.chat.completions.create(
        model=BASE_MODEL, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=16
    )
    assert "Paris" in base.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(model="router", messages=items[0].messages(), max_tokens=4)

    # Rollback is instant and returns the old behaviour.
    r = httpx.post(f"{tailor_server.url}/v1/adapters/router/rollback", headers=auth)
    assert r.status_code == 200 and r.json()["active_version"] == 1
