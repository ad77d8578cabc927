"""The wire: every body Tailor's routes accept or answer, one module per API.

Response models are built from the domain's dataclasses (`Model.model_validate(info)`,
gateway.protocol.wire), not copied field by field in the routers; where the wire shows a
dataclass as it is, the model's fields are the dataclass's (`wire_model`). Completion request
bodies, and what of them reaches the engine, are gateway.request_policy; `/v1/responses`
request bodies are gateway.responses.protocol.
"""

from gateway.protocol.adapters import (
    ActivateVersion,
    AdapterOut,
    AdapterRegisterPath,
    AdapterVersionOut,
    CanaryStart,
    VersionLineageOut,
)
from gateway.protocol.admin import EngineOut, KeyCreate, KeyCreated, KeyOut, TenantCreate, TenantOut
from gateway.protocol.models import ModelCard, ModelDeleted, ModelList

__all__ = [
    "ActivateVersion",
    "AdapterOut",
    "AdapterRegisterPath",
    "AdapterVersionOut",
    "CanaryStart",
    "EngineOut",
    "KeyCreate",
    "KeyCreated",
    "KeyOut",
    "ModelCard",
    "ModelDeleted",
    "ModelList",
    "TenantCreate",
    "TenantOut",
    "VersionLineageOut",
]
