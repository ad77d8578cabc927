"""What every response model of the package shares: read from a domain dataclass's
attributes, and OpenAI's Unix-second timestamps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class WireModel(BaseModel):
    """A response body built with `model_validate(info)` from the dataclass the domain
    returns: the fields are read by name, so a field renamed on one side fails loudly."""

    model_config = ConfigDict(from_attributes=True)


def unix_seconds(value: datetime) -> int:
    """OpenAI's timestamps: whole Unix seconds."""
    return int(value.timestamp())


def _unix_if_datetime(value: Any) -> Any:
    # Anything else is left to the int field's own validation.
    return unix_seconds(value) if isinstance(value, datetime) else value


# An int on the wire read from a datetime of the domain's; its schema stays a plain integer.
UnixTime = Annotated[int, BeforeValidator(_unix_if_datetime)]


class Identified(Protocol):
    @property
    def id(self) -> Any: ...


def page_ids(data: Sequence[Identified]) -> dict[str, Any]:
    """`first_id` and `last_id` of a list page: its first and last entries' ids, None when it is empty."""
    return {"first_id": data[0].id if data else None, "last_id": data[-1].id if data else None}


def attributes(info: DataclassInstance) -> dict[str, Any]:
    """A dataclass's fields by name, the values as they are (`asdict` would copy nested ones into dicts)."""
    return {f.name: getattr(info, f.name) for f in fields(info)}
