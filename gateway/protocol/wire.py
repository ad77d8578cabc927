"""What every response model of the package shares: read from a domain dataclass's
attributes (and, where the wire shows the dataclass as it is, built from its fields), and
OpenAI's Unix-second timestamps."""

from __future__ import annotations

import sys
from collections.abc import Collection, Sequence
from dataclasses import fields
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, Protocol, TypeVar, get_type_hints

from pydantic import BaseModel, BeforeValidator, ConfigDict, create_model

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class WireModel(BaseModel):
    """A response body built with `model_validate(info)` from the dataclass the domain
    returns: the fields are read by name, so a field renamed on one side fails loudly."""

    model_config = ConfigDict(from_attributes=True)


Item = TypeVar("Item")


class ListPage(BaseModel, Generic[Item]):
    """OpenAI's list without first and last ids: one page of items, and whether more follow.
    A subclass names it (`class JobListOut(ListPage[JobOut]): pass`): the schema takes that name."""

    object: Literal["list"] = "list"
    data: list[Item]
    has_more: bool


def wire_model(
    name: str,
    source: type[DataclassInstance],
    *,
    lead: Sequence[str] = (),
    omit: Collection[str] = (),
    **wire: Any,
) -> type[WireModel]:
    """The response model `name` of the domain dataclass `source`: its fields, in its order and
    with its types, written once. A field added to the dataclass is on the wire from then on: one
    that must not leave the gateway (a hash, a path) goes in `omit`.

    Each field is required (a response always carries it, whatever the dataclass's default).
    `wire` names a field's type on the wire where it differs (an enum shown as `str`) or adds a
    field (`object`), as a type or a `(type, default)` pair; `omit` keeps internal fields off the
    wire. Fields come in this order: those named in `lead`, the added ones, then the rest.
    """
    hints = get_type_hints(source)
    domain = {f.name: hints[f.name] for f in fields(source) if f.name not in omit}
    merged = {**domain, **wire}
    added = [n for n in wire if n not in domain]
    order = [*lead, *(n for n in added if n not in lead), *(n for n in domain if n not in lead)]
    model: type[WireModel] = create_model(
        name,
        __base__=WireModel,
        # The module that names the model, as a class statement there would.
        __module__=sys._getframe(1).f_globals["__name__"],
        **{n: merged[n] for n in order},
    )
    return model


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
