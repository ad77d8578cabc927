"""Every response model read from a domain object (gateway.protocol's WireModels) shows exactly
the fields listed here. Several are built from their dataclass's fields (wire_model), so a field
added to a domain dataclass would reach the wire unseen: this list makes it a reviewed change
(is it a hash, a path, a key, another tenant's id?) instead of a silent one."""

from __future__ import annotations

import importlib
import pkgutil

import gateway.protocol as protocol
from gateway.protocol.wire import WireModel

SHOWN = {
    "AdapterVersionOut": "id version digest rank alpha target_modules size_bytes state source active created_at kind",
    "AdapterOut": "id name active_version canary_version canary_fraction versions created_at",
    "VersionLineageOut": "version id state source digest job_id dataset_id parent_version_id metrics created_at "
    "promoted_at promoted_by serving kind",
    "MergeOut": "id object adapter_name source_version activate status model version metrics error created_at "
    "finished_at",
    "TenantOut": "id name created_at",
    "KeyOut": "id tenant_id hint name created_at expires_at revoked_at",
    "KeyCreated": "id tenant_id hint name created_at expires_at revoked_at key",
    "EngineOut": "url healthy inflight resident_adapters loads evictions",
    "AuditEventOut": "object id at actor tenant_id action target before after",
    "FeedbackOut": "id object interaction_id adapter_version_id model rating score correction preferred rejected "
    "messages source created_at",
    "OpenAIFileOut": "id object bytes created_at filename purpose status",
    "JobEventOut": "object id created_at level message type data",
    "PolicyOut": "retrain retrain_min_feedback retrain_interval_hours auto_promote canary_fraction gates reward_grader "
    "merge_above_share merge_min_requests last_triggered_at",
    "SignalOut": "judged good bad corrections share_good correction_rate",
    "DriftOut": "adapter_name version promoted_level recent drifted reason",
    "StoredMessageOut": "id role refusal name content content_parts tool_calls tool_call_id",
    "TrainingFileOut": "id object bytes created_at filename purpose status examples skipped",
}


def wire_models() -> dict[str, type[WireModel]]:
    found: dict[str, type[WireModel]] = {}
    for module in pkgutil.iter_modules(protocol.__path__):
        for value in vars(importlib.import_module(f"{protocol.__name__}.{module.name}")).values():
            if isinstance(value, type) and issubclass(value, WireModel) and value is not WireModel:
                found[value.__name__] = value
    return found


def test_every_response_model_read_from_the_domain_shows_only_its_listed_fields() -> None:
    models = wire_models()
    assert set(models) == set(SHOWN), "a response model was added or removed: list its fields in SHOWN"
    for name, model in models.items():
        assert sorted(model.model_fields) == sorted(SHOWN[name].split()), name
