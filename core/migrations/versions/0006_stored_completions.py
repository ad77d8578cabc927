"""stored completions: chat completions created with `store: true`, and their metadata

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stored", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("stored_metadata", sa.JSON(), nullable=True))
    # Partial on both backends: rows of requests without `store` stay out of it.
    op.create_index(
        "ix_interactions_stored",
        "interactions",
        ["tenant_id", "created_at"],
        unique=False,
        sqlite_where=sa.text("stored = 1"),
        postgresql_where=sa.text("stored"),
    )


def downgrade() -> None:
    op.drop_index("ix_interactions_stored", table_name="interactions")
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.drop_column("stored_metadata")
        batch_op.drop_column("stored")
