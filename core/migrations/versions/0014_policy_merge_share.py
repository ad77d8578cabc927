"""tenant_policies.merge_above_share and merge_min_requests: an adapter with at least that
share of the tenant's chat traffic (and that many requests) is merged into the base by itself
(null: never)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-16 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenant_policies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("merge_above_share", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("merge_min_requests", sa.Integer(), nullable=False, server_default="1000"))


def downgrade() -> None:
    with op.batch_alter_table("tenant_policies", schema=None) as batch_op:
        batch_op.drop_column("merge_min_requests")
        batch_op.drop_column("merge_above_share")
