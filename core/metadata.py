"""OpenAI's `metadata`: up to 16 string pairs a client attaches to an object and filters by.

One set of bounds and one way to match a stored pair in SQL, for every object that carries
metadata (stored chat completions, fine-tuning jobs). A list route takes the filter as
OpenAI's deepObject query parameters, `metadata[key]=value`, every pair to match.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import ColumnElement, exists, func
from sqlalchemy.orm import InstrumentedAttribute

from core.errors import bad_request

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512


def check_metadata(value: Mapping[str, str]) -> dict[str, str]:
    """OpenAI's bounds on `metadata`; a ValueError names the pair that breaks them."""
    if len(value) > MAX_METADATA_PAIRS:
        raise ValueError(f"metadata holds at most {MAX_METADATA_PAIRS} key-value pairs (got {len(value)})")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise ValueError(f"metadata keys and values are strings (got {key!r}: {item!r})")
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise ValueError(f"metadata key {key[:16]!r}... is longer than {MAX_METADATA_KEY_CHARS} characters")
        if len(item) > MAX_METADATA_VALUE_CHARS:
            raise ValueError(f"metadata value of {key!r} is longer than {MAX_METADATA_VALUE_CHARS} characters")
    return dict(value)


def filter_from_query(query: Iterable[tuple[str, str]]) -> dict[str, str]:
    """`metadata[key]=value` query parameters as a dict, within OpenAI's metadata bounds."""
    pairs = {name[len("metadata[") : -1]: value for name, value in query if _is_metadata_param(name)}
    try:
        return check_metadata(pairs)
    except ValueError as exc:
        raise bad_request(f"Invalid metadata filter: {exc}.", code="invalid_value", param="metadata") from None


def _is_metadata_param(name: str) -> bool:
    return name.startswith("metadata[") and name.endswith("]")


def has_pair(column: InstrumentedAttribute[Any], dialect: str, key: str, value: str) -> ColumnElement[bool]:
    """SQL: the JSON object in `column` holds `key` with the string `value`."""
    if dialect == "sqlite":
        # A json_extract path cannot spell every key (quotes, backslashes, non-ASCII);
        # json_each names keys as plain values.
        entries = func.json_each(column).table_valued("key", "value")
        return exists().where(entries.c.key == key, entries.c.value == value)
    return column[key].as_string() == value  # type: ignore[no-any-return]
