"""Retraining and promotion policy, and an adapter's drift (`/v1/policy`, `/v1/adapters/{name}/drift`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.protocol.wire import wire_model
from trainer import merge_policy, policy
from trainer.feedback import FeedbackSignal


class PolicyIn(BaseModel):
    """Fields to change; omitted ones keep their value."""

    model_config = ConfigDict(extra="forbid", strict=True)

    retrain: Literal["off", "on_demand", "feedback_count", "drift", "schedule"] | None = None
    retrain_min_feedback: int | None = Field(None, ge=1, le=policy.MAX_MIN_FEEDBACK)
    retrain_interval_hours: float | None = Field(None, gt=0, le=policy.MAX_INTERVAL_HOURS, allow_inf_nan=False)
    auto_promote: bool | None = Field(None, description="Promote a candidate that passes the gates without a person.")
    canary_fraction: float | None = Field(None, ge=0, lt=1, description="Passing candidates first serve this share.")
    gates: dict[str, Any] | None = Field(None, description="primary_metric, min_improvement, noise, min_examples.")
    reward_grader: dict[str, Any] | None = Field(
        None,
        description="A grader (as a reinforcement job's): triggered runs train with the reinforcement method on "
        "the adapter's logged prompts, scored by it. null removes it.",
    )
    merge_above_share: float | None = Field(
        None,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="An adapter with at least this share of your chat requests in the last "
        f"{merge_policy.WINDOW_HOURS:g} h is merged into the base model (the merged version activated if "
        "auto_promote). null turns it off.",
    )
    merge_min_requests: int | None = Field(
        None,
        ge=1,
        le=policy.MAX_MIN_REQUESTS,
        description="Requests in that window an adapter needs before its share can trigger a merge.",
    )


# reward_grader and merge_above_share are optional in the response schema, as they have been since they were added.
PolicyOut = wire_model(
    "PolicyOut",
    policy.PolicyInfo,
    omit=("tenant_id",),
    reward_grader=(dict[str, Any] | None, None),
    merge_above_share=(float | None, None),
)
SignalOut = wire_model("SignalOut", FeedbackSignal)
DriftOut = wire_model("DriftOut", policy.DriftStatus, promoted_level=SignalOut | None, recent=SignalOut | None)
