"""batch usage: interactions.batch_id (a batch's requests are metered apart), batches' token counts

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-12 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_TOKENS = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")


def upgrade() -> None:
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_id", sa.String(length=40), nullable=True))
    with op.batch_alter_table("batches", schema=None) as batch_op:
        for name in _TOKENS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        for name in reversed(_TOKENS):
            batch_op.drop_column(name)
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.drop_column("batch_id")
