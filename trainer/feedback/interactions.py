"""The tenant's logged interactions that feedback points at, fetched by id."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Interaction

# Ids per query: well under every database's limit on bound parameters.
_CHUNK = 500


def tenant_interactions(s: Session, tenant_id: str, ids: Iterable[str]) -> dict[str, Interaction]:
    """The tenant's interactions among `ids`, by id; another tenant's ids are simply absent."""
    wanted = sorted(set(ids))
    found: dict[str, Interaction] = {}
    for i in range(0, len(wanted), _CHUNK):
        chunk = wanted[i : i + _CHUNK]
        rows = s.scalars(select(Interaction).where(Interaction.tenant_id == tenant_id, Interaction.id.in_(chunk)))
        found.update({row.id: row for row in rows})
    return found


def logged_answer(interaction: Interaction) -> str | None:
    """The answer the gateway logged, or None when the request failed."""
    return interaction.response_text if interaction.status_code < 400 else None
