"""The job and version vocabularies: what the database stores and what the API sends."""

from __future__ import annotations

import json

import orjson
import pytest
from sqlalchemy import String

from core.models import AdapterVersion, Job
from core.states import (
    OPEN_JOB_STATUSES,
    TERMINAL_JOB_STATUSES,
    UNSERVABLE_VERSION_STATES,
    WAITING_JOB_STATUSES,
    JobStatus,
    VersionState,
)


@pytest.mark.parametrize(("enum", "column"), [(JobStatus, Job.status), (VersionState, AdapterVersion.state)])
def test_every_value_fits_its_column(enum: type[JobStatus] | type[VersionState], column: object) -> None:
    length = column.property.columns[0].type.length  # type: ignore[attr-defined]
    assert isinstance(column.property.columns[0].type, String)  # type: ignore[attr-defined]
    assert all(len(member.value) <= length for member in enum)


def test_job_groups_split_every_status_once() -> None:
    assert sorted(OPEN_JOB_STATUSES + TERMINAL_JOB_STATUSES) == sorted(JobStatus)
    assert set(WAITING_JOB_STATUSES) < set(OPEN_JOB_STATUSES)
    assert set(UNSERVABLE_VERSION_STATES) < set(VersionState)


def test_a_member_is_its_stored_string_on_the_wire() -> None:
    # Rows read back are plain strings; they must compare (and hash) equal to the members.
    assert JobStatus("queued") is JobStatus.QUEUED and JobStatus.QUEUED == "queued"
    assert {"rolled_back": 1}[VersionState.ROLLED_BACK] == 1
    assert orjson.dumps({"status": JobStatus.PAUSED}) == b'{"status":"paused"}'
    assert json.dumps({"state": VersionState.ACTIVE}) == '{"state": "active"}'
    assert f"{JobStatus.VALIDATING_FILES}" == "validating_files"
